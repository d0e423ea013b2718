package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/agent"
	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

func verifyCommand() *cli.Command {
	return &cli.Command{
		Name:      "verify",
		Usage:     "check a release's signatures, threshold, expiry, sequence, every chunk and every file digest",
		ArgsUsage: "NAME|CID|ENVELOPE-FILE",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "trust", Usage: "trust root `FILE`", Required: true},
		},
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 1, "NAME|CID|ENVELOPE-FILE"); err != nil {
				return err
			}
			return runVerify(c, globalsOf(c), c.String("trust"), c.Args().First())
		},
	}
}

// loadEnvelope returns the envelope named by ref: a file on disk, or a
// release name or manifest CID in the catalog.
func loadEnvelope(cat *agent.Catalog, ref string) ([]byte, error) {
	if fi, err := os.Stat(ref); err == nil && fi.Mode().IsRegular() {
		return os.ReadFile(ref)
	}
	r, err := cat.Get(ref)
	if err != nil {
		return nil, err
	}
	return r.Envelope, nil
}

// verifyEnvelope checks an envelope against the trust root and against the
// release of the same name this node holds (rollback).
func verifyEnvelope(cat *agent.Catalog, root *manifest.Root, envelope []byte) (*manifest.Manifest, cid.Cid, error) {
	m, id, err := root.VerifyManifest(envelope, time.Now())
	if err != nil {
		return nil, cid.Undef, err
	}
	held, err := cat.Get(m.Name)
	switch {
	case errors.Is(err, agent.ErrReleaseNotFound):
	case err != nil:
		return nil, cid.Undef, err
	default:
		if err := manifest.CheckSequence(held.Manifest, m); err != nil {
			return nil, cid.Undef, err
		}
	}
	return m, id, nil
}

func runVerify(c *cli.Context, g globals, trustFile, ref string) error {
	root, err := loadTrust(trustFile)
	if err != nil {
		return err
	}
	s, cat, err := g.openStoreForReading()
	if err != nil {
		return err
	}
	defer s.Close()
	envelope, err := loadEnvelope(cat, ref)
	if err != nil {
		return err
	}
	signers, err := root.Signers(envelope)
	if err != nil {
		return err
	}
	m, id, err := verifyEnvelope(cat, root, envelope)
	if err != nil {
		return err
	}
	bar := newProgress(g, m.TotalSize(), "verify", true)
	var problems []store.Problem
	res, err := store.VerifyRelease(c.Context, s, m, store.VerifyOptions{
		Progress: func(n int64) { progressSet(bar, n) },
		Problem:  func(p store.Problem) { problems = append(problems, p) },
	})
	if err != nil {
		return err
	}
	progressDone(bar)
	if g.json {
		list := make([]map[string]string, len(problems))
		for i, p := range problems {
			list[i] = map[string]string{"kind": p.Kind.String(), "error": p.Err.Error()}
			if p.CID.Defined() {
				list[i]["cid"] = p.CID.String()
			}
		}
		if err := g.printJSON(map[string]any{
			"name": m.Name, "cid": id.String(), "sequence": m.Sequence, "ok": len(problems) == 0, "signers": signers,
			"files": len(m.Files), "chunks": res.Chunks, "bytes": res.Bytes, "problems": list,
		}); err != nil {
			return err
		}
	} else {
		for _, p := range problems {
			if p.CID.Defined() {
				fmt.Fprintf(g.stdout, "%s %s: %v\n", p.Kind, p.CID, p.Err)
			} else {
				fmt.Fprintf(g.stdout, "%s: %v\n", p.Kind, p.Err)
			}
		}
	}
	if len(problems) > 0 {
		return &exitError{code: adminapi.ExitBadData, err: fmt.Errorf("verify %s: %d problems; signature, threshold and expiry are good", m.Name, len(problems))}
	}
	if !g.json {
		fmt.Fprintf(g.stdout, "ok %s (sequence %d, %s): signatures, threshold, expiry, %d chunks and %d files verified\n", m.Name, m.Sequence, id, res.Chunks, len(m.Files))
		fmt.Fprintf(g.stdout, "  signed by %s\n", strings.Join(signers.Trusted, ", "))
		writeSigners(g.stdout, signers)
	}
	return nil
}
