package p2p

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

type failingEnvelopes struct{}

func (failingEnvelopes) Envelope(context.Context, string) ([]byte, error) {
	return nil, errors.New("disk on fire")
}

func TestManifestRoundTrip(t *testing.T) {
	mid := testManifestID("HF-S041000005-012")
	large := bytes.Repeat([]byte("signed envelope "), 1<<18) // 4 MiB
	src := envelopes{
		"HF-S041000005-012": []byte(`{"payload":"..."}`),
		mid.String():        []byte(`{"payload":"by cid"}`),
		"large":             large,
	}
	cases := []struct {
		ref  string
		want []byte
		err  error
	}{
		{"HF-S041000005-012", src["HF-S041000005-012"], nil},
		{mid.String(), src[mid.String()], nil},
		{"large", large, nil},
		{"HF-S041000005-013", nil, ErrNotFound},
	}
	for _, tn := range testNetworks {
		t.Run(tn.name, func(t *testing.T) {
			server, client := tn.pair(t)
			svc := NewManifestService(server, src, ManifestConfig{})
			t.Cleanup(func() { _ = svc.Close() })
			for _, tc := range cases {
				got, err := GetEnvelope(testContext(t), client, server.ID(), tc.ref)
				if !errors.Is(err, tc.err) || !bytes.Equal(got, tc.want) {
					t.Errorf("GetEnvelope(%q) = %d bytes, %v; want %d bytes, %v", tc.ref, len(got), err, len(tc.want), tc.err)
				}
			}
		})
	}
}

func TestManifestSourceFailure(t *testing.T) {
	server, client := mocknetPair(t)
	svc := NewManifestService(server, failingEnvelopes{}, ManifestConfig{})
	t.Cleanup(func() { _ = svc.Close() })
	if _, err := GetEnvelope(testContext(t), client, server.ID(), "x"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("GetEnvelope = %v, want ErrUnavailable", err)
	}
}

func TestManifestServerResetsGarbage(t *testing.T) {
	cases := []struct {
		name string
		raw  []byte
	}{
		{"nothing", nil},
		{"empty ref", frameOf(nil)},
		{"oversized ref", frameOf(bytes.Repeat([]byte("a"), MaxRefLen+1))},
		{"control character", frameOf([]byte("HF-1\nforged log line"))},
		{"invalid UTF-8", frameOf([]byte{'a', 0xff})},
		{"two requests", append(frameOf([]byte("a")), frameOf([]byte("b"))...)},
	}
	for _, tn := range testNetworks[:2] {
		t.Run(tn.name, func(t *testing.T) {
			server, client := tn.pair(t)
			svc := NewManifestService(server, envelopes{"a": []byte("env")}, ManifestConfig{})
			t.Cleanup(func() { _ = svc.Close() })
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					got, err := sendRaw(t, client, server.ID(), ManifestProtocol, tc.raw)
					wantReset(t, got, err)
					var env []byte
					err = againAfterGarbage(t, client, server.ID(), func() (err error) {
						env, err = GetEnvelope(testContext(t), client, server.ID(), "a")
						return err
					})
					if err != nil || string(env) != "env" {
						t.Fatalf("after %s: %q, %v", tc.name, env, err)
					}
				})
			}
		})
	}
}

func TestManifestClientRefusesBadRef(t *testing.T) {
	_, client := mocknetPair(t)
	for _, ref := range []string{"", string(bytes.Repeat([]byte("a"), MaxRefLen+1)), "a\x00b"} {
		if _, err := GetEnvelope(testContext(t), client, client.ID(), ref); !errors.Is(err, ErrMalformed) {
			t.Errorf("GetEnvelope(%q) = %v, want ErrMalformed", ref, err)
		}
	}
}
