package metaserver

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// Sealed secrets: the CHAP secrets of volumes are stored sealed with
// AES-256-GCM, so that a dump of the volumes table or a log line that
// quotes a row does not show them. The format is drawn in the package doc.

const (
	// sealVersion is the first byte of a sealed value.
	sealVersion = 1
	// sealKeyInfo is the HKDF info string of the sealing key; a new key
	// derivation gets a new string and a new sealVersion.
	sealKeyInfo = "chunkraid volume secrets v1"
	sealNonce   = 12
	sealTag     = 16
	// sealOverhead is what sealing adds to a secret.
	sealOverhead = 1 + sealNonce + sealTag
)

// errUnseal is returned when a sealed value is malformed, or was not sealed
// with this cluster's key for the same purpose.
var errUnseal = errors.New("sealed value cannot be opened")

// sealer seals and opens secrets with a key derived from the cluster secret.
type sealer struct {
	aead cipher.AEAD
}

// newSealer derives the sealing key from the cluster secret (hex):
// HKDF-SHA256 with no salt and sealKeyInfo as info.
func newSealer(clusterSecret string) (*sealer, error) {
	ikm, err := hex.DecodeString(clusterSecret)
	if err != nil || len(ikm) < 16 {
		return nil, fmt.Errorf("the cluster secret is not hex of at least 16 bytes")
	}
	key, err := hkdf.Key(sha256.New, ikm, nil, sealKeyInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("derive the sealing key: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("sealing cipher: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("sealing cipher: %w", err)
	}
	return &sealer{aead: aead}, nil
}

// seal encrypts plain with a fresh random nonce. purpose is authenticated
// but not stored: open needs the same purpose, so a value cannot be moved to
// another column or volume.
func (s *sealer) seal(plain []byte, purpose string) []byte {
	out := make([]byte, 1+sealNonce, sealOverhead+len(plain))
	out[0] = sealVersion
	// crypto/rand.Read never fails (it crashes the program if the system
	// has no randomness).
	_, _ = rand.Read(out[1 : 1+sealNonce])
	return s.aead.Seal(out, out[1:1+sealNonce], plain, []byte(purpose))
}

// open decrypts a value made by seal with the same purpose.
func (s *sealer) open(sealed []byte, purpose string) ([]byte, error) {
	if len(sealed) < sealOverhead {
		return nil, fmt.Errorf("%w: %d bytes is too short", errUnseal, len(sealed))
	}
	if sealed[0] != sealVersion {
		return nil, fmt.Errorf("%w: unknown version %d", errUnseal, sealed[0])
	}
	plain, err := s.aead.Open(nil, sealed[1:1+sealNonce], sealed[1+sealNonce:], []byte(purpose))
	if err != nil {
		return nil, fmt.Errorf("%w: wrong key, purpose or bytes", errUnseal)
	}
	return plain, nil
}

// secretPurpose names a volume's secret column for sealing.
func secretPurpose(volume, column string) string {
	return "volume " + volume + " " + column
}
