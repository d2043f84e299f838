package metaserver

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

const (
	testSecretA = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	testSecretB = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
)

func mustSealer(t testing.TB, secret string) *sealer {
	t.Helper()
	s, err := newSealer(secret)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSealRoundTripAndRefusals(t *testing.T) {
	t.Parallel()
	a, b := mustSealer(t, testSecretA), mustSealer(t, testSecretB)
	plain := []byte("correct horse battery")
	purpose := secretPurpose("v1", colCHAPSecret)
	sealed := a.seal(plain, purpose)
	if len(sealed) != sealOverhead+len(plain) || sealed[0] != sealVersion {
		t.Fatalf("sealed %d bytes, version %d", len(sealed), sealed[0])
	}
	if bytes.Contains(sealed, plain) || bytes.Contains(sealed, plain[:8]) {
		t.Fatal("the sealed value shows the secret")
	}
	if again := a.seal(plain, purpose); bytes.Equal(again, sealed) {
		t.Error("two seals of one secret are equal: the nonce is not fresh")
	}
	got, err := a.open(sealed, purpose)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("open = %q, %v", got, err)
	}
	flip := func(i int) []byte {
		c := bytes.Clone(sealed)
		c[i] ^= 1
		return c
	}
	tests := []struct {
		name    string
		s       *sealer
		sealed  []byte
		purpose string
	}{
		{"another cluster's key", b, sealed, purpose},
		{"another volume", a, sealed, secretPurpose("v2", colCHAPSecret)},
		{"another column", a, sealed, secretPurpose("v1", colMutualSecret)},
		{"flipped version", a, flip(0), purpose},
		{"flipped nonce", a, flip(3), purpose},
		{"flipped ciphertext", a, flip(sealOverhead - sealTag + 2), purpose},
		{"flipped tag", a, flip(len(sealed) - 1), purpose},
		{"truncated", a, sealed[:len(sealed)-1], purpose},
		{"too short", a, sealed[:sealOverhead-1], purpose},
		{"empty", a, []byte{}, purpose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.s.open(tt.sealed, tt.purpose)
			if !errors.Is(err, errUnseal) || got != nil {
				t.Errorf("open = %q, %v; want errUnseal", got, err)
			}
		})
	}
	if _, err := newSealer("not hex"); err == nil {
		t.Error("newSealer accepted a secret that is not hex")
	}
	if _, err := newSealer("abcd"); err == nil {
		t.Error("newSealer accepted a 2-byte secret")
	}
}

// FuzzUnseal opens arbitrary bytes: nothing panics, and only a value this
// sealer made opens.
func FuzzUnseal(f *testing.F) {
	s := mustSealer(f, testSecretA)
	purpose := secretPurpose("v", colCHAPSecret)
	f.Add(s.seal([]byte("twelve bytes"), purpose))
	f.Add([]byte{})
	f.Add([]byte{sealVersion})
	f.Add(bytes.Repeat([]byte{1}, sealOverhead))
	f.Fuzz(func(t *testing.T, b []byte) {
		plain, err := s.open(b, purpose)
		if err != nil {
			if !errors.Is(err, errUnseal) {
				t.Fatalf("error %v is not errUnseal", err)
			}
			return
		}
		// Only the seed was sealed here; a fuzzed value that opens must be it.
		if string(plain) != "twelve bytes" || !strings.HasPrefix(string(b[:1]), "\x01") {
			t.Fatalf("opened %q from %x", plain, b)
		}
	})
}
