package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
)

// Magic numbers.
const (
	MagicNBD             uint64 = 0x4e42444d41474943 // "NBDMAGIC", first word of the greeting
	MagicOpt             uint64 = 0x49484156454F5054 // "IHAVEOPT", greeting and option requests
	MagicOptReply        uint64 = 0x3e889045565a9    // option replies
	MagicRequest         uint32 = 0x25609513         // transmission requests
	MagicSimpleReply     uint32 = 0x67446698         // simple replies
	MagicStructuredReply uint32 = 0x668e33ef         // structured reply chunks
)

// Fixed message sizes in bytes.
const (
	GreetingSize          = 18  // NBDMAGIC, IHAVEOPT, handshake flags
	ClientFlagsSize       = 4   // client flags
	OptionHeaderSize      = 16  // IHAVEOPT, option, length
	OptionReplyHeaderSize = 20  // magic, option, reply type, length
	ExportNameReplySize   = 10  // size, transmission flags (before padding)
	ExportNamePadding     = 124 // zero bytes unless NO_ZEROES was negotiated
	RequestHeaderSize     = 28
	SimpleReplySize       = 16
	ChunkHeaderSize       = 20
	DescriptorSize        = 8 // one block status descriptor
)

// Limits this package enforces on what it reads.
const (
	// MaxOptionLength bounds the data of one option request or reply.
	MaxOptionLength = 64 << 10
	// MaxStringLength bounds export names, context names, queries and
	// messages, as the protocol requires.
	MaxStringLength = 4096
	// MaxPayload is the largest READ or WRITE this package serves or sends
	// in one request; the server advertises it as its maximum block size.
	MaxPayload = 32 << 20
	// MinBlockSize and PreferredBlockSize are the other two sizes the
	// server advertises.
	MinBlockSize       = 1
	PreferredBlockSize = 4096
	// MaxDescriptors bounds the descriptors of one block status chunk
	// (the protocol's recommended ceiling).
	MaxDescriptors = 1 << 20
)

// Handshake flags (server, 16 bits).
const (
	FlagFixedNewstyle uint16 = 1 << 0
	FlagNoZeroes      uint16 = 1 << 1
)

// Client flags (32 bits).
const (
	FlagCFixedNewstyle uint32 = 1 << 0
	FlagCNoZeroes      uint32 = 1 << 1
)

// Option types.
const (
	OptExportName      uint32 = 1
	OptAbort           uint32 = 2
	OptList            uint32 = 3
	OptPeekExport      uint32 = 4 // withdrawn
	OptStartTLS        uint32 = 5
	OptInfo            uint32 = 6
	OptGo              uint32 = 7
	OptStructuredReply uint32 = 8
	OptListMetaContext uint32 = 9
	OptSetMetaContext  uint32 = 10
	OptExtendedHeaders uint32 = 11 // experimental; not implemented
)

// Option reply types. Errors have bit 31 set.
const (
	RepAck         uint32 = 1
	RepServer      uint32 = 2
	RepInfo        uint32 = 3
	RepMetaContext uint32 = 4

	RepFlagError        uint32 = 1 << 31
	RepErrUnsup         uint32 = RepFlagError | 1
	RepErrPolicy        uint32 = RepFlagError | 2
	RepErrInvalid       uint32 = RepFlagError | 3
	RepErrPlatform      uint32 = RepFlagError | 4
	RepErrTLSReqd       uint32 = RepFlagError | 5
	RepErrUnknown       uint32 = RepFlagError | 6
	RepErrShutdown      uint32 = RepFlagError | 7
	RepErrBlockSizeReqd uint32 = RepFlagError | 8
	RepErrTooBig        uint32 = RepFlagError | 9
	RepErrExtHeaderReqd uint32 = RepFlagError | 10
)

const (
	repErrLast       = RepErrExtHeaderReqd
	repFirstNonError = RepAck
	repLastNonError  = RepMetaContext
	optLast          = OptExtendedHeaders
	cmdLast          = CmdBlockStatus
)

// Information types for INFO and GO.
const (
	InfoExport      uint16 = 0
	InfoName        uint16 = 1
	InfoDescription uint16 = 2
	InfoBlockSize   uint16 = 3
)

// Transmission flags (16 bits).
const (
	FlagHasFlags        uint16 = 1 << 0
	FlagReadOnly        uint16 = 1 << 1
	FlagSendFlush       uint16 = 1 << 2
	FlagSendFUA         uint16 = 1 << 3
	FlagRotational      uint16 = 1 << 4
	FlagSendTrim        uint16 = 1 << 5
	FlagSendWriteZeroes uint16 = 1 << 6
	FlagSendDF          uint16 = 1 << 7
	FlagCanMultiConn    uint16 = 1 << 8
	FlagSendResize      uint16 = 1 << 9
	FlagSendCache       uint16 = 1 << 10
	FlagSendFastZero    uint16 = 1 << 11
)

// Command types.
const (
	CmdRead        uint16 = 0
	CmdWrite       uint16 = 1
	CmdDisc        uint16 = 2
	CmdFlush       uint16 = 3
	CmdTrim        uint16 = 4
	CmdCache       uint16 = 5
	CmdWriteZeroes uint16 = 6
	CmdBlockStatus uint16 = 7
)

// Command flags (16 bits).
const (
	CmdFlagFUA      uint16 = 1 << 0
	CmdFlagNoHole   uint16 = 1 << 1
	CmdFlagDF       uint16 = 1 << 2
	CmdFlagReqOne   uint16 = 1 << 3
	CmdFlagFastZero uint16 = 1 << 4
)

// Structured reply flags and types.
const (
	ReplyFlagDone uint16 = 1 << 0

	ReplyTypeNone        uint16 = 0
	ReplyTypeOffsetData  uint16 = 1
	ReplyTypeOffsetHole  uint16 = 2
	ReplyTypeBlockStatus uint16 = 5
	ReplyTypeFlagError   uint16 = 1 << 15
	ReplyTypeError       uint16 = ReplyTypeFlagError | 1
	ReplyTypeErrorOffset uint16 = ReplyTypeFlagError | 2
)

// Error values carried in replies.
const (
	EPERM     uint32 = 1
	EIO       uint32 = 5
	ENOMEM    uint32 = 12
	EINVAL    uint32 = 22
	ENOSPC    uint32 = 28
	EOVERFLOW uint32 = 75
	ENOTSUP   uint32 = 95
	ESHUTDOWN uint32 = 108
)

// Status flags of the base:allocation meta context.
const (
	StateHole uint32 = 1 << 0
	StateZero uint32 = 1 << 1
)

// ContextBaseAllocation is the one meta context the protocol defines.
const ContextBaseAllocation = "base:allocation"

// Decoding errors. Decoders wrap one of these with detail.
var (
	// ErrTruncated means the input ended before the message did.
	ErrTruncated = errors.New("nbd: truncated message")
	// ErrBadMagic means a message did not start with the expected magic.
	ErrBadMagic = errors.New("nbd: bad magic")
	// ErrTooLong means a length field exceeds what this package accepts.
	ErrTooLong = errors.New("nbd: length exceeds limit")
	// ErrMalformed means the fields of a message contradict each other or
	// the protocol.
	ErrMalformed = errors.New("nbd: malformed message")
)

func truncated(what string, need, have int) error {
	return fmt.Errorf("%w: %s needs %d bytes, have %d", ErrTruncated, what, need, have)
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}

var be = binary.BigEndian

// ---- handshake ----

// AppendGreeting appends the server greeting with the given handshake flags.
func AppendGreeting(b []byte, flags uint16) []byte {
	b = be.AppendUint64(b, MagicNBD)
	b = be.AppendUint64(b, MagicOpt)
	return be.AppendUint16(b, flags)
}

// DecodeGreeting decodes the server greeting and returns the handshake
// flags. An oldstyle greeting is reported as ErrBadMagic.
func DecodeGreeting(b []byte) (uint16, error) {
	if len(b) < GreetingSize {
		return 0, truncated("greeting", GreetingSize, len(b))
	}
	if m := be.Uint64(b); m != MagicNBD {
		return 0, fmt.Errorf("%w: greeting starts with %#x", ErrBadMagic, m)
	}
	if m := be.Uint64(b[8:]); m != MagicOpt {
		return 0, fmt.Errorf("%w: greeting has %#x, not IHAVEOPT (oldstyle server?)", ErrBadMagic, m)
	}
	return be.Uint16(b[16:]), nil
}

// AppendClientFlags appends the client's 32-bit flags.
func AppendClientFlags(b []byte, flags uint32) []byte { return be.AppendUint32(b, flags) }

// DecodeClientFlags decodes the client's flags.
func DecodeClientFlags(b []byte) (uint32, error) {
	if len(b) < ClientFlagsSize {
		return 0, truncated("client flags", ClientFlagsSize, len(b))
	}
	return be.Uint32(b), nil
}

// OptionHeader is the fixed part of an option request.
type OptionHeader struct {
	Option uint32
	Length uint32 // bytes of option data that follow
}

// AppendOptionHeader appends an option request header.
func AppendOptionHeader(b []byte, h OptionHeader) []byte {
	b = be.AppendUint64(b, MagicOpt)
	b = be.AppendUint32(b, h.Option)
	return be.AppendUint32(b, h.Length)
}

// DecodeOptionHeader decodes an option request header, refusing data
// longer than MaxOptionLength.
func DecodeOptionHeader(b []byte) (OptionHeader, error) {
	if len(b) < OptionHeaderSize {
		return OptionHeader{}, truncated("option header", OptionHeaderSize, len(b))
	}
	if m := be.Uint64(b); m != MagicOpt {
		return OptionHeader{}, fmt.Errorf("%w: option header starts with %#x", ErrBadMagic, m)
	}
	h := OptionHeader{Option: be.Uint32(b[8:]), Length: be.Uint32(b[12:])}
	if h.Length > MaxOptionLength {
		return h, fmt.Errorf("%w: option %s carries %d bytes (limit %d)", ErrTooLong, OptName(h.Option), h.Length, MaxOptionLength)
	}
	return h, nil
}

// OptionReplyHeader is the fixed part of an option reply.
type OptionReplyHeader struct {
	Option uint32 // the option being answered
	Type   uint32 // RepAck, RepInfo, RepErrUnsup, ...
	Length uint32 // bytes of reply data that follow
}

// AppendOptionReplyHeader appends an option reply header.
func AppendOptionReplyHeader(b []byte, h OptionReplyHeader) []byte {
	b = be.AppendUint64(b, MagicOptReply)
	b = be.AppendUint32(b, h.Option)
	b = be.AppendUint32(b, h.Type)
	return be.AppendUint32(b, h.Length)
}

// DecodeOptionReplyHeader decodes an option reply header, refusing data
// longer than MaxOptionLength.
func DecodeOptionReplyHeader(b []byte) (OptionReplyHeader, error) {
	if len(b) < OptionReplyHeaderSize {
		return OptionReplyHeader{}, truncated("option reply header", OptionReplyHeaderSize, len(b))
	}
	if m := be.Uint64(b); m != MagicOptReply {
		return OptionReplyHeader{}, fmt.Errorf("%w: option reply starts with %#x", ErrBadMagic, m)
	}
	h := OptionReplyHeader{Option: be.Uint32(b[8:]), Type: be.Uint32(b[12:]), Length: be.Uint32(b[16:])}
	if h.Length > MaxOptionLength {
		return h, fmt.Errorf("%w: reply to %s carries %d bytes (limit %d)", ErrTooLong, OptName(h.Option), h.Length, MaxOptionLength)
	}
	return h, nil
}

// ExportRequest is the data of an INFO or GO option.
type ExportRequest struct {
	Name  string
	Infos []uint16 // information types requested
}

// AppendExportRequest appends the data of an INFO or GO option.
func AppendExportRequest(b []byte, r ExportRequest) []byte {
	b = be.AppendUint32(b, uint32(len(r.Name)))
	b = append(b, r.Name...)
	b = be.AppendUint16(b, uint16(len(r.Infos)))
	for _, t := range r.Infos {
		b = be.AppendUint16(b, t)
	}
	return b
}

// DecodeExportRequest decodes the data of an INFO or GO option. The data
// must be exactly as long as its fields say.
func DecodeExportRequest(b []byte) (ExportRequest, error) {
	if len(b) < 6 {
		return ExportRequest{}, truncated("export request", 6, len(b))
	}
	n := be.Uint32(b)
	if n > MaxStringLength {
		return ExportRequest{}, fmt.Errorf("%w: export name of %d bytes", ErrTooLong, n)
	}
	if uint64(n) > uint64(len(b)-6) {
		return ExportRequest{}, malformed("export name of %d bytes in %d bytes of option data", n, len(b))
	}
	r := ExportRequest{Name: string(b[4 : 4+n])}
	rest := b[4+n:]
	k := int(be.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*k {
		return ExportRequest{}, malformed("%d information requests in %d bytes", k, len(rest))
	}
	if k > 0 {
		r.Infos = make([]uint16, k)
		for i := range r.Infos {
			r.Infos[i] = be.Uint16(rest[2*i:])
		}
	}
	return r, nil
}

// MetaContextRequest is the data of LIST_META_CONTEXT and SET_META_CONTEXT.
type MetaContextRequest struct {
	Export  string
	Queries []string
}

// AppendMetaContextRequest appends the data of a meta context option.
func AppendMetaContextRequest(b []byte, r MetaContextRequest) []byte {
	b = be.AppendUint32(b, uint32(len(r.Export)))
	b = append(b, r.Export...)
	b = be.AppendUint32(b, uint32(len(r.Queries)))
	for _, q := range r.Queries {
		b = be.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// DecodeMetaContextRequest decodes the data of a meta context option. The
// data must be exactly as long as its fields say.
func DecodeMetaContextRequest(b []byte) (MetaContextRequest, error) {
	var r MetaContextRequest
	name, rest, err := decodeString32(b, "export name")
	if err != nil {
		return r, err
	}
	r.Export = name
	if len(rest) < 4 {
		return r, truncated("query count", 4, len(rest))
	}
	nq := be.Uint32(rest)
	rest = rest[4:]
	// Each query needs at least its 4-byte length: bound the count before
	// allocating anything.
	if uint64(nq)*4 > uint64(len(rest)) {
		return r, malformed("%d queries in %d bytes", nq, len(rest))
	}
	if nq > 0 {
		r.Queries = make([]string, 0, nq)
	}
	for range nq {
		var q string
		q, rest, err = decodeString32(rest, "query")
		if err != nil {
			return r, err
		}
		r.Queries = append(r.Queries, q)
	}
	if len(rest) != 0 {
		return r, malformed("%d bytes after the last query", len(rest))
	}
	return r, nil
}

// decodeString32 decodes a 32-bit length followed by that many bytes.
func decodeString32(b []byte, what string) (string, []byte, error) {
	if len(b) < 4 {
		return "", nil, truncated(what+" length", 4, len(b))
	}
	n := be.Uint32(b)
	if n > MaxStringLength {
		return "", nil, fmt.Errorf("%w: %s of %d bytes", ErrTooLong, what, n)
	}
	if uint64(n) > uint64(len(b)-4) {
		return "", nil, truncated(what, int(n), len(b)-4)
	}
	return string(b[4 : 4+n]), b[4+n:], nil
}

// AppendExportNameReply appends the answer to EXPORT_NAME: size, flags and,
// unless noZeroes, 124 bytes of zero padding.
func AppendExportNameReply(b []byte, size uint64, flags uint16, noZeroes bool) []byte {
	b = be.AppendUint64(b, size)
	b = be.AppendUint16(b, flags)
	if !noZeroes {
		b = append(b, make([]byte, ExportNamePadding)...)
	}
	return b
}

// DecodeExportNameReply decodes the first 10 bytes of the answer to
// EXPORT_NAME (the caller skips the padding, if any).
func DecodeExportNameReply(b []byte) (size uint64, flags uint16, err error) {
	if len(b) < ExportNameReplySize {
		return 0, 0, truncated("export name reply", ExportNameReplySize, len(b))
	}
	return be.Uint64(b), be.Uint16(b[8:]), nil
}

// AppendRepServer appends the data of a REP_SERVER reply.
func AppendRepServer(b []byte, name string) []byte {
	b = be.AppendUint32(b, uint32(len(name)))
	return append(b, name...)
}

// DecodeRepServer decodes the data of a REP_SERVER reply into the export
// name and the optional description that follows it.
func DecodeRepServer(b []byte) (name, description string, err error) {
	name, rest, err := decodeString32(b, "export name")
	if err != nil {
		return "", "", err
	}
	if len(rest) > MaxStringLength {
		return "", "", fmt.Errorf("%w: export description of %d bytes", ErrTooLong, len(rest))
	}
	return name, string(rest), nil
}

// AppendRepMetaContext appends the data of a REP_META_CONTEXT reply.
func AppendRepMetaContext(b []byte, id uint32, name string) []byte {
	b = be.AppendUint32(b, id)
	return append(b, name...)
}

// DecodeRepMetaContext decodes the data of a REP_META_CONTEXT reply.
func DecodeRepMetaContext(b []byte) (id uint32, name string, err error) {
	if len(b) < 4 {
		return 0, "", truncated("meta context reply", 4, len(b))
	}
	if len(b)-4 > MaxStringLength {
		return 0, "", fmt.Errorf("%w: meta context name of %d bytes", ErrTooLong, len(b)-4)
	}
	return be.Uint32(b), string(b[4:]), nil
}

// AppendInfoExport appends the data of a REP_INFO carrying INFO_EXPORT.
func AppendInfoExport(b []byte, size uint64, flags uint16) []byte {
	b = be.AppendUint16(b, InfoExport)
	b = be.AppendUint64(b, size)
	return be.AppendUint16(b, flags)
}

// BlockSizes are the three size constraints of INFO_BLOCK_SIZE.
type BlockSizes struct {
	Min, Preferred, Max uint32
}

// AppendInfoBlockSize appends the data of a REP_INFO carrying
// INFO_BLOCK_SIZE.
func AppendInfoBlockSize(b []byte, s BlockSizes) []byte {
	b = be.AppendUint16(b, InfoBlockSize)
	b = be.AppendUint32(b, s.Min)
	b = be.AppendUint32(b, s.Preferred)
	return be.AppendUint32(b, s.Max)
}

// AppendInfoString appends the data of a REP_INFO carrying INFO_NAME or
// INFO_DESCRIPTION.
func AppendInfoString(b []byte, infoType uint16, s string) []byte {
	b = be.AppendUint16(b, infoType)
	return append(b, s...)
}

// Info is a decoded REP_INFO. Only the fields of Type are meaningful.
type Info struct {
	Type       uint16
	Size       uint64     // InfoExport
	Flags      uint16     // InfoExport
	BlockSizes BlockSizes // InfoBlockSize
	Text       string     // InfoName, InfoDescription
}

// DecodeInfo decodes the data of a REP_INFO reply. Unknown information types
// decode without error (Type set, nothing else) so that callers can ignore
// them as the protocol requires.
func DecodeInfo(b []byte) (Info, error) {
	if len(b) < 2 {
		return Info{}, truncated("info reply", 2, len(b))
	}
	in := Info{Type: be.Uint16(b)}
	p := b[2:]
	switch in.Type {
	case InfoExport:
		if len(p) != 10 {
			return in, malformed("INFO_EXPORT of %d bytes, want 10", len(p))
		}
		in.Size = be.Uint64(p)
		in.Flags = be.Uint16(p[8:])
	case InfoBlockSize:
		if len(p) != 12 {
			return in, malformed("INFO_BLOCK_SIZE of %d bytes, want 12", len(p))
		}
		in.BlockSizes = BlockSizes{Min: be.Uint32(p), Preferred: be.Uint32(p[4:]), Max: be.Uint32(p[8:])}
	case InfoName, InfoDescription:
		if len(p) > MaxStringLength {
			return in, fmt.Errorf("%w: info string of %d bytes", ErrTooLong, len(p))
		}
		in.Text = string(p)
	}
	return in, nil
}

// ---- transmission ----

// Request is a transmission request header.
type Request struct {
	Flags  uint16 // CmdFlag*
	Type   uint16 // Cmd*
	Cookie uint64
	Offset uint64
	Length uint32
}

// AppendRequest appends a 28-byte request header.
func AppendRequest(b []byte, r Request) []byte {
	b = be.AppendUint32(b, MagicRequest)
	b = be.AppendUint16(b, r.Flags)
	b = be.AppendUint16(b, r.Type)
	b = be.AppendUint64(b, r.Cookie)
	b = be.AppendUint64(b, r.Offset)
	return be.AppendUint32(b, r.Length)
}

// DecodeRequest decodes a 28-byte request header.
func DecodeRequest(b []byte) (Request, error) {
	if len(b) < RequestHeaderSize {
		return Request{}, truncated("request", RequestHeaderSize, len(b))
	}
	if m := be.Uint32(b); m != MagicRequest {
		return Request{}, fmt.Errorf("%w: request starts with %#x", ErrBadMagic, m)
	}
	return Request{
		Flags:  be.Uint16(b[4:]),
		Type:   be.Uint16(b[6:]),
		Cookie: be.Uint64(b[8:]),
		Offset: be.Uint64(b[16:]),
		Length: be.Uint32(b[24:]),
	}, nil
}

// SimpleReply is a simple reply header.
type SimpleReply struct {
	Errno  uint32
	Cookie uint64
}

// AppendSimpleReply appends a 16-byte simple reply header.
func AppendSimpleReply(b []byte, r SimpleReply) []byte {
	b = be.AppendUint32(b, MagicSimpleReply)
	b = be.AppendUint32(b, r.Errno)
	return be.AppendUint64(b, r.Cookie)
}

// DecodeSimpleReply decodes a 16-byte simple reply header.
func DecodeSimpleReply(b []byte) (SimpleReply, error) {
	if len(b) < SimpleReplySize {
		return SimpleReply{}, truncated("simple reply", SimpleReplySize, len(b))
	}
	if m := be.Uint32(b); m != MagicSimpleReply {
		return SimpleReply{}, fmt.Errorf("%w: simple reply starts with %#x", ErrBadMagic, m)
	}
	return SimpleReply{Errno: be.Uint32(b[4:]), Cookie: be.Uint64(b[8:])}, nil
}

// ChunkHeader is a structured reply chunk header.
type ChunkHeader struct {
	Flags  uint16 // ReplyFlagDone
	Type   uint16 // ReplyType*
	Cookie uint64
	Length uint32 // payload bytes that follow
}

// AppendChunkHeader appends a 20-byte structured reply chunk header.
func AppendChunkHeader(b []byte, h ChunkHeader) []byte {
	b = be.AppendUint32(b, MagicStructuredReply)
	b = be.AppendUint16(b, h.Flags)
	b = be.AppendUint16(b, h.Type)
	b = be.AppendUint64(b, h.Cookie)
	return be.AppendUint32(b, h.Length)
}

// DecodeChunkHeader decodes a 20-byte structured reply chunk header. The
// payload length is not bounded here: only the caller knows what the
// request allows.
func DecodeChunkHeader(b []byte) (ChunkHeader, error) {
	if len(b) < ChunkHeaderSize {
		return ChunkHeader{}, truncated("structured reply", ChunkHeaderSize, len(b))
	}
	if m := be.Uint32(b); m != MagicStructuredReply {
		return ChunkHeader{}, fmt.Errorf("%w: structured reply starts with %#x", ErrBadMagic, m)
	}
	return ChunkHeader{
		Flags:  be.Uint16(b[4:]),
		Type:   be.Uint16(b[6:]),
		Cookie: be.Uint64(b[8:]),
		Length: be.Uint32(b[16:]),
	}, nil
}

// ErrorChunk is the payload of an error chunk (ERROR, ERROR_OFFSET or an
// unknown type with bit 15 set).
type ErrorChunk struct {
	Errno     uint32
	Message   string
	Offset    uint64 // ERROR_OFFSET only
	HasOffset bool
}

// AppendErrorChunk appends the payload of an ERROR chunk, or of an
// ERROR_OFFSET chunk if e.HasOffset. Messages longer than MaxStringLength
// are cut.
func AppendErrorChunk(b []byte, e ErrorChunk) []byte {
	msg := e.Message
	if len(msg) > MaxStringLength {
		msg = msg[:MaxStringLength]
	}
	b = be.AppendUint32(b, e.Errno)
	b = be.AppendUint16(b, uint16(len(msg)))
	b = append(b, msg...)
	if e.HasOffset {
		b = be.AppendUint64(b, e.Offset)
	}
	return b
}

// DecodeErrorChunk decodes the payload of an error chunk of the given type.
func DecodeErrorChunk(typ uint16, b []byte) (ErrorChunk, error) {
	if typ&ReplyTypeFlagError == 0 {
		return ErrorChunk{}, malformed("chunk type %#x is not an error type", typ)
	}
	if len(b) < 6 {
		return ErrorChunk{}, truncated("error chunk", 6, len(b))
	}
	e := ErrorChunk{Errno: be.Uint32(b)}
	n := int(be.Uint16(b[4:]))
	if n > MaxStringLength {
		return e, fmt.Errorf("%w: error message of %d bytes", ErrTooLong, n)
	}
	rest := b[6:]
	if n > len(rest) {
		return e, malformed("error message of %d bytes in a %d-byte payload", n, len(b))
	}
	e.Message = string(rest[:n])
	rest = rest[n:]
	if typ == ReplyTypeErrorOffset {
		if len(rest) != 8 {
			return e, malformed("ERROR_OFFSET with %d trailing bytes, want 8", len(rest))
		}
		e.Offset = be.Uint64(rest)
		e.HasOffset = true
	} else if typ == ReplyTypeError && len(rest) != 0 {
		return e, malformed("ERROR with %d trailing bytes", len(rest))
	}
	return e, nil
}

// DecodeOffsetHole decodes the payload of an OFFSET_HOLE chunk.
func DecodeOffsetHole(b []byte) (offset uint64, size uint32, err error) {
	if len(b) != 12 {
		return 0, 0, malformed("OFFSET_HOLE payload of %d bytes, want 12", len(b))
	}
	offset, size = be.Uint64(b), be.Uint32(b[8:])
	if size == 0 {
		return 0, 0, malformed("OFFSET_HOLE of size 0")
	}
	return offset, size, nil
}

// AppendOffsetHole appends the payload of an OFFSET_HOLE chunk.
func AppendOffsetHole(b []byte, offset uint64, size uint32) []byte {
	b = be.AppendUint64(b, offset)
	return be.AppendUint32(b, size)
}

// Descriptor is one block status descriptor.
type Descriptor struct {
	Length uint32 // bytes, nonzero
	Flags  uint32 // meaning set by the meta context
}

// AppendBlockStatus appends the payload of a BLOCK_STATUS chunk.
func AppendBlockStatus(b []byte, contextID uint32, ds []Descriptor) []byte {
	b = be.AppendUint32(b, contextID)
	for _, d := range ds {
		b = be.AppendUint32(b, d.Length)
		b = be.AppendUint32(b, d.Flags)
	}
	return b
}

// DecodeBlockStatus decodes the payload of a BLOCK_STATUS chunk, appending
// the descriptors to dst.
func DecodeBlockStatus(b []byte, dst []Descriptor) (contextID uint32, ds []Descriptor, err error) {
	if len(b) < 4+DescriptorSize {
		return 0, dst, truncated("block status", 4+DescriptorSize, len(b))
	}
	if (len(b)-4)%DescriptorSize != 0 {
		return 0, dst, malformed("block status payload of %d bytes is not 4+8n", len(b))
	}
	n := (len(b) - 4) / DescriptorSize
	if n > MaxDescriptors {
		return 0, dst, fmt.Errorf("%w: %d descriptors in one chunk", ErrTooLong, n)
	}
	contextID = be.Uint32(b)
	for p := b[4:]; len(p) > 0; p = p[DescriptorSize:] {
		d := Descriptor{Length: be.Uint32(p), Flags: be.Uint32(p[4:])}
		if d.Length == 0 {
			return contextID, dst, malformed("block status descriptor of length 0")
		}
		dst = append(dst, d)
	}
	return contextID, dst, nil
}

// ---- names ----

var optNames = [...]string{
	OptExportName: "NBD_OPT_EXPORT_NAME", OptAbort: "NBD_OPT_ABORT", OptList: "NBD_OPT_LIST",
	OptPeekExport: "NBD_OPT_PEEK_EXPORT", OptStartTLS: "NBD_OPT_STARTTLS", OptInfo: "NBD_OPT_INFO",
	OptGo: "NBD_OPT_GO", OptStructuredReply: "NBD_OPT_STRUCTURED_REPLY",
	OptListMetaContext: "NBD_OPT_LIST_META_CONTEXT", OptSetMetaContext: "NBD_OPT_SET_META_CONTEXT",
	OptExtendedHeaders: "NBD_OPT_EXTENDED_HEADERS",
}

// OptName names an option type.
func OptName(o uint32) string {
	if o >= 1 && o <= optLast {
		return optNames[o]
	}
	return "NBD_OPT_" + strconv.FormatUint(uint64(o), 10)
}

var repNames = [...]string{
	RepAck: "NBD_REP_ACK", RepServer: "NBD_REP_SERVER", RepInfo: "NBD_REP_INFO", RepMetaContext: "NBD_REP_META_CONTEXT",
}

var repErrNames = [...]string{
	RepErrUnsup &^ RepFlagError: "NBD_REP_ERR_UNSUP", RepErrPolicy &^ RepFlagError: "NBD_REP_ERR_POLICY",
	RepErrInvalid &^ RepFlagError: "NBD_REP_ERR_INVALID", RepErrPlatform &^ RepFlagError: "NBD_REP_ERR_PLATFORM",
	RepErrTLSReqd &^ RepFlagError: "NBD_REP_ERR_TLS_REQD", RepErrUnknown &^ RepFlagError: "NBD_REP_ERR_UNKNOWN",
	RepErrShutdown &^ RepFlagError: "NBD_REP_ERR_SHUTDOWN", RepErrBlockSizeReqd &^ RepFlagError: "NBD_REP_ERR_BLOCK_SIZE_REQD",
	RepErrTooBig &^ RepFlagError: "NBD_REP_ERR_TOO_BIG", RepErrExtHeaderReqd &^ RepFlagError: "NBD_REP_ERR_EXT_HEADER_REQD",
}

// RepName names an option reply type.
func RepName(t uint32) string {
	switch {
	case t >= repFirstNonError && t <= repLastNonError:
		return repNames[t]
	case t&RepFlagError != 0 && t&^RepFlagError >= 1 && t <= repErrLast:
		return repErrNames[t&^RepFlagError]
	case t&RepFlagError != 0:
		return "NBD_REP_ERR_" + strconv.FormatUint(uint64(t&^RepFlagError), 10)
	}
	return "NBD_REP_" + strconv.FormatUint(uint64(t), 10)
}

var cmdNames = [...]string{
	CmdRead: "NBD_CMD_READ", CmdWrite: "NBD_CMD_WRITE", CmdDisc: "NBD_CMD_DISC", CmdFlush: "NBD_CMD_FLUSH",
	CmdTrim: "NBD_CMD_TRIM", CmdCache: "NBD_CMD_CACHE", CmdWriteZeroes: "NBD_CMD_WRITE_ZEROES",
	CmdBlockStatus: "NBD_CMD_BLOCK_STATUS",
}

// CmdName names a command type.
func CmdName(c uint16) string {
	if c <= cmdLast {
		return cmdNames[c]
	}
	return "NBD_CMD_" + strconv.FormatUint(uint64(c), 10)
}

// ErrnoName names an error value.
func ErrnoName(e uint32) string {
	switch e {
	case EPERM:
		return "EPERM"
	case EIO:
		return "EIO"
	case ENOMEM:
		return "ENOMEM"
	case EINVAL:
		return "EINVAL"
	case ENOSPC:
		return "ENOSPC"
	case EOVERFLOW:
		return "EOVERFLOW"
	case ENOTSUP:
		return "ENOTSUP"
	case ESHUTDOWN:
		return "ESHUTDOWN"
	}
	return "errno " + strconv.FormatUint(uint64(e), 10)
}
