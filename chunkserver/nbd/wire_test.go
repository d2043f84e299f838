package nbd

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// codecCase is one message: its encoding and a decoder that returns the
// decoded value.
type codecCase struct {
	name   string
	enc    []byte
	decode func([]byte) (any, error)
	want   any
}

func codecCases() []codecCase {
	req := Request{Flags: CmdFlagFUA, Type: CmdWrite, Cookie: 0x0102030405060708, Offset: 1 << 40, Length: 4096}
	sr := SimpleReply{Errno: EIO, Cookie: 77}
	ch := ChunkHeader{Flags: ReplyFlagDone, Type: ReplyTypeOffsetData, Cookie: 9, Length: 4104}
	oh := OptionHeader{Option: OptGo, Length: 12}
	orh := OptionReplyHeader{Option: OptGo, Type: RepInfo, Length: 12}
	er := ExportRequest{Name: "chunk-7", Infos: []uint16{InfoBlockSize, InfoName}}
	mr := MetaContextRequest{Export: "chunk-7", Queries: []string{"base:allocation", "chunkraid:log"}}
	ec := ErrorChunk{Errno: EINVAL, Message: "bad range"}
	eco := ErrorChunk{Errno: EIO, Message: "disk", Offset: 4096, HasOffset: true}
	ds := []Descriptor{{Length: 4096, Flags: StateHole}, {Length: 8192, Flags: 0}}
	type hole struct {
		Off  uint64
		Size uint32
	}
	type rmc struct {
		ID   uint32
		Name string
	}
	type bs struct {
		ID uint32
		D  []Descriptor
	}
	type enr struct {
		Size  uint64
		Flags uint16
	}
	return []codecCase{
		{"greeting", AppendGreeting(nil, FlagFixedNewstyle|FlagNoZeroes),
			func(b []byte) (any, error) { return DecodeGreeting(b) }, FlagFixedNewstyle | FlagNoZeroes},
		{"client flags", AppendClientFlags(nil, FlagCNoZeroes),
			func(b []byte) (any, error) { return DecodeClientFlags(b) }, FlagCNoZeroes},
		{"option header", AppendOptionHeader(nil, oh),
			func(b []byte) (any, error) { return DecodeOptionHeader(b) }, oh},
		{"option reply header", AppendOptionReplyHeader(nil, orh),
			func(b []byte) (any, error) { return DecodeOptionReplyHeader(b) }, orh},
		{"export request", AppendExportRequest(nil, er),
			func(b []byte) (any, error) { return DecodeExportRequest(b) }, er},
		{"export request without infos", AppendExportRequest(nil, ExportRequest{Name: "x"}),
			func(b []byte) (any, error) { return DecodeExportRequest(b) }, ExportRequest{Name: "x"}},
		{"meta context request", AppendMetaContextRequest(nil, mr),
			func(b []byte) (any, error) { return DecodeMetaContextRequest(b) }, mr},
		{"export name reply", AppendExportNameReply(nil, 1<<30, FlagHasFlags|FlagSendFlush, true),
			func(b []byte) (any, error) { s, f, err := DecodeExportNameReply(b); return enr{s, f}, err },
			enr{1 << 30, FlagHasFlags | FlagSendFlush}},
		{"rep server", AppendRepServer(nil, "chunk-1"),
			func(b []byte) (any, error) { n, _, err := DecodeRepServer(b); return n, err }, "chunk-1"},
		{"rep meta context", AppendRepMetaContext(nil, 3, "chunkraid:log"),
			func(b []byte) (any, error) { id, n, err := DecodeRepMetaContext(b); return rmc{id, n}, err },
			rmc{3, "chunkraid:log"}},
		{"info export", AppendInfoExport(nil, 10<<30, transmissionFlags),
			func(b []byte) (any, error) { return DecodeInfo(b) },
			Info{Type: InfoExport, Size: 10 << 30, Flags: transmissionFlags}},
		{"info block size", AppendInfoBlockSize(nil, BlockSizes{1, 4096, MaxPayload}),
			func(b []byte) (any, error) { return DecodeInfo(b) },
			Info{Type: InfoBlockSize, BlockSizes: BlockSizes{1, 4096, MaxPayload}}},
		{"info name", AppendInfoString(nil, InfoName, "c"),
			func(b []byte) (any, error) { return DecodeInfo(b) }, Info{Type: InfoName, Text: "c"}},
		{"request", AppendRequest(nil, req),
			func(b []byte) (any, error) { return DecodeRequest(b) }, req},
		{"simple reply", AppendSimpleReply(nil, sr),
			func(b []byte) (any, error) { return DecodeSimpleReply(b) }, sr},
		{"chunk header", AppendChunkHeader(nil, ch),
			func(b []byte) (any, error) { return DecodeChunkHeader(b) }, ch},
		{"error chunk", AppendErrorChunk(nil, ec),
			func(b []byte) (any, error) { return DecodeErrorChunk(ReplyTypeError, b) }, ec},
		{"error offset chunk", AppendErrorChunk(nil, eco),
			func(b []byte) (any, error) { return DecodeErrorChunk(ReplyTypeErrorOffset, b) }, eco},
		{"offset hole", AppendOffsetHole(nil, 8192, 4096),
			func(b []byte) (any, error) { o, s, err := DecodeOffsetHole(b); return hole{o, s}, err },
			hole{8192, 4096}},
		{"block status", AppendBlockStatus(nil, 2, ds),
			func(b []byte) (any, error) { id, d, err := DecodeBlockStatus(b, nil); return bs{id, d}, err },
			bs{2, ds}},
	}
}

func TestCodecRoundTrip(t *testing.T) {
	for _, tc := range codecCases() {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.decode(tc.enc)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("decoded %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestCodecTruncated feeds every proper prefix of each encoding to its
// decoder: all must fail, none may panic. (Variable-length messages whose
// prefix is itself valid are skipped by the length checks below.)
func TestCodecTruncated(t *testing.T) {
	for _, tc := range codecCases() {
		t.Run(tc.name, func(t *testing.T) {
			for n := range len(tc.enc) {
				got, err := tc.decode(tc.enc[:n])
				if err == nil && reflect.DeepEqual(got, tc.want) {
					t.Fatalf("prefix of %d/%d bytes decoded to the full message", n, len(tc.enc))
				}
			}
		})
	}
}

func TestCodecSizes(t *testing.T) {
	sizes := []struct {
		name string
		got  int
		want int
	}{
		{"greeting", len(AppendGreeting(nil, 0)), GreetingSize},
		{"option header", len(AppendOptionHeader(nil, OptionHeader{})), OptionHeaderSize},
		{"option reply header", len(AppendOptionReplyHeader(nil, OptionReplyHeader{})), OptionReplyHeaderSize},
		{"request", len(AppendRequest(nil, Request{})), RequestHeaderSize},
		{"simple reply", len(AppendSimpleReply(nil, SimpleReply{})), SimpleReplySize},
		{"chunk header", len(AppendChunkHeader(nil, ChunkHeader{})), ChunkHeaderSize},
		{"export name reply, padded", len(AppendExportNameReply(nil, 0, 0, false)), ExportNameReplySize + ExportNamePadding},
		{"export name reply, no zeroes", len(AppendExportNameReply(nil, 0, 0, true)), ExportNameReplySize},
	}
	for _, s := range sizes {
		if s.got != s.want {
			t.Errorf("%s: %d bytes, want %d", s.name, s.got, s.want)
		}
	}
	// Spot-check byte order against the protocol's layouts.
	req := AppendRequest(nil, Request{Flags: 1, Type: 2, Cookie: 3, Offset: 4, Length: 5})
	want := []byte{0x25, 0x60, 0x95, 0x13, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 5}
	if !bytes.Equal(req, want) {
		t.Fatalf("request bytes % x, want % x", req, want)
	}
	if g := AppendGreeting(nil, 3); string(g[:16]) != "NBDMAGICIHAVEOPT" {
		t.Fatalf("greeting starts %q", g[:16])
	}
}

func TestCodecRejects(t *testing.T) {
	bigName := strings.Repeat("n", MaxStringLength+1)
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"request bad magic", second(DecodeRequest(make([]byte, RequestHeaderSize))), ErrBadMagic},
		{"simple reply bad magic", second(DecodeSimpleReply(make([]byte, SimpleReplySize))), ErrBadMagic},
		{"chunk bad magic", second(DecodeChunkHeader(make([]byte, ChunkHeaderSize))), ErrBadMagic},
		{"oldstyle greeting", second(DecodeGreeting(append(be.AppendUint64(nil, MagicNBD), make([]byte, 10)...))), ErrBadMagic},
		{"option too long", second(DecodeOptionHeader(AppendOptionHeader(nil, OptionHeader{Option: OptGo, Length: MaxOptionLength + 1}))), ErrTooLong},
		{"option reply too long", second(DecodeOptionReplyHeader(AppendOptionReplyHeader(nil, OptionReplyHeader{Length: 1 << 31}))), ErrTooLong},
		{"export name too long", second(DecodeExportRequest(AppendExportRequest(nil, ExportRequest{Name: bigName}))), ErrTooLong},
		{"export request trailing byte", second(DecodeExportRequest(append(AppendExportRequest(nil, ExportRequest{Name: "a"}), 0))), ErrMalformed},
		{"export request name overruns", second(DecodeExportRequest([]byte{0, 0, 0, 9, 'a', 0, 0})), ErrMalformed},
		{"query too long", second(DecodeMetaContextRequest(AppendMetaContextRequest(nil, MetaContextRequest{Queries: []string{bigName}}))), ErrTooLong},
		{"huge query count", second(DecodeMetaContextRequest([]byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})), ErrMalformed},
		{"meta request trailing bytes", second(DecodeMetaContextRequest(append(AppendMetaContextRequest(nil, MetaContextRequest{}), 1))), ErrMalformed},
		{"info export wrong length", second(DecodeInfo([]byte{0, 0, 1, 2, 3})), ErrMalformed},
		{"error message overruns", second(DecodeErrorChunk(ReplyTypeError, []byte{0, 0, 0, 5, 0, 9, 'x'})), ErrMalformed},
		{"error offset missing", second(DecodeErrorChunk(ReplyTypeErrorOffset, AppendErrorChunk(nil, ErrorChunk{Errno: 5}))), ErrMalformed},
		{"error chunk of non-error type", second(DecodeErrorChunk(ReplyTypeNone, make([]byte, 6))), ErrMalformed},
		{"hole of size zero", third(DecodeOffsetHole(make([]byte, 12))), ErrMalformed},
		{"block status ragged", third(DecodeBlockStatus(make([]byte, 4+8+3), nil)), ErrMalformed},
		{"block status zero extent", third(DecodeBlockStatus(make([]byte, 4+8), nil)), ErrMalformed},
		{"short request", second(DecodeRequest([]byte{0x25})), ErrTruncated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !errors.Is(tc.err, tc.want) {
				t.Fatalf("error %v, want %v", tc.err, tc.want)
			}
		})
	}
}

func second[T any](_ T, err error) error { return err }

func third[A, B any](_ A, _ B, err error) error { return err }

func TestNames(t *testing.T) {
	names := []struct{ got, want string }{
		{OptName(OptGo), "NBD_OPT_GO"},
		{OptName(99), "NBD_OPT_99"},
		{RepName(RepErrUnknown), "NBD_REP_ERR_UNKNOWN"},
		{RepName(RepAck), "NBD_REP_ACK"},
		{RepName(RepFlagError | 77), "NBD_REP_ERR_77"},
		{CmdName(CmdBlockStatus), "NBD_CMD_BLOCK_STATUS"},
		{CmdName(200), "NBD_CMD_200"},
		{ErrnoName(ENOSPC), "ENOSPC"},
		{ErrnoName(3), "errno 3"},
	}
	for _, n := range names {
		if n.got != n.want {
			t.Errorf("got %q, want %q", n.got, n.want)
		}
	}
}
