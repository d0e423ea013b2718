package main

import (
	"bytes"
	"fmt"
	"os"
	"slices"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/agent"
	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

// handover is what handing a release to the origin did.
type handover struct {
	ChunksSent   int    `json:"chunks_sent"`
	BytesSent    int64  `json:"bytes_sent"`
	IndexVersion uint64 `json:"index_version"`
	// IndexFile is where the next index was written for more key holders
	// to sign, if it was not handed over.
	IndexFile string `json:"index_file,omitempty"`
}

// handToOrigin hands a release held here to the origin: the signed envelope,
// then the stored chunk frames it lacks (sent as stored, and verified there
// against their CIDs), then the origin's next index with the release in it,
// signed with is's keys (or written to is.out for more to sign). Run again,
// it sends only what is still missing.
func handToOrigin(c *cli.Context, g globals, is indexSigning, s *store.Disk, r *agent.Release) (*handover, error) {
	ac, err := adminClient(c, g, "origin")
	if err != nil {
		return nil, err
	}
	ctx := c.Context
	h := &handover{}
	ing, err := ac.PostRelease(ctx, r.Envelope)
	if err != nil {
		return nil, err
	}
	for _, ref := range ing.Missing {
		id, err := manifest.ParseChunkID(ref)
		if err != nil {
			return nil, fmt.Errorf("the origin asked for %q: %w", ref, err)
		}
		frame, err := s.GetFrame(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("the origin asked for chunk %s, not held here: %w", id, err)
		}
		if err := ac.PutChunk(ctx, id, frame); err != nil {
			return nil, err
		}
		h.ChunksSent++
		h.BytesSent += int64(len(frame))
	}
	if len(ing.Missing) > 0 {
		if ing, err = ac.PostRelease(ctx, r.Envelope); err != nil {
			return nil, err
		}
		if !ing.Stored {
			return nil, fmt.Errorf("the origin still lacks %d chunks of %s", len(ing.Missing), r.Name)
		}
	}
	entry := manifest.IndexEntry{Name: r.Name, CID: r.CID.String(), Sequence: r.Manifest.Sequence}
	ix, _, err := editOriginIndex(ctx, ac, is, func(held, next *manifest.Index) (bool, error) {
		if held != nil {
			if e, ok := held.Lookup(r.Name); ok && e.CID == entry.CID {
				return false, nil
			}
		}
		next.Releases = slices.DeleteFunc(next.Releases, func(e manifest.IndexEntry) bool { return e.Name == entry.Name })
		next.Releases = append(next.Releases, entry)
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	if ix != nil {
		h.IndexVersion = ix.Version
	}
	h.IndexFile = is.out
	return h, nil
}

func pushCommand() *cli.Command {
	return &cli.Command{
		Name: "push",
		Usage: "hand a release published here to the origin: its envelope (or a copy of it more key holders signed), the chunks the origin lacks, " +
			"and the origin's next index with it listed",
		ArgsUsage: "RELEASE|ENVELOPE-FILE",
		Flags:     slices.Concat(indexSigningFlags(), adminFlags("origin", "the origin's")),
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 1, "RELEASE|ENVELOPE-FILE"); err != nil {
				return err
			}
			return runPush(c, globalsOf(c), c.Args().First())
		},
	}
}

func runPush(c *cli.Context, g globals, ref string) error {
	is, err := readIndexSigning(c)
	if err != nil {
		return err
	}
	s, cat, err := g.openStore()
	if err != nil {
		return err
	}
	defer s.Close()
	r, err := releaseToPush(cat, ref)
	if err != nil {
		return err
	}
	h, err := handToOrigin(c, g, is, s, r)
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(map[string]any{"name": r.Name, "cid": r.CID.String(), "origin": h})
	}
	fmt.Fprintf(g.stdout, "handed %s to the origin: %d chunks (%s) sent\n", r.Name, h.ChunksSent, humanBytes(h.BytesSent))
	printIndexOutcome(g, h)
	return nil
}

// releaseToPush returns the release ref names: one of the data dir's, or
// the envelope in a file, which must hold a release published here (more
// key holders may have signed it since): the catalog then keeps that copy.
func releaseToPush(cat *agent.Catalog, ref string) (*agent.Release, error) {
	data, err := os.ReadFile(ref)
	if os.IsNotExist(err) {
		return cat.Get(ref)
	}
	if err != nil {
		return nil, err
	}
	e, err := manifest.ParseEnvelope(data)
	if err != nil {
		return nil, err
	}
	if e.Type != manifest.TypeManifest {
		return nil, usageError("%s holds a %s, not a release", ref, e.Type)
	}
	held, err := cat.Get(e.Name)
	if err != nil {
		return nil, fmt.Errorf("%s is release %s, which is not published here: %w", ref, e.Name, err)
	}
	heldEnv, err := manifest.ParseEnvelope(held.Envelope)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(heldEnv.Payload, e.Payload) {
		return nil, fmt.Errorf("%s is another manifest of %s than the one published here: %w", ref, e.Name, manifest.ErrTampered)
	}
	if err := cat.Save(e.Name, data); err != nil {
		return nil, err
	}
	return cat.Get(e.Name)
}

// printIndexOutcome says what became of the origin's next index.
func printIndexOutcome(g globals, h *handover) {
	if h.IndexFile != "" {
		fmt.Fprintf(g.stdout, "index version %d written to %s: have more key holders sign it (patchctl sign --key KEY %s), then patchctl index push %s\n",
			h.IndexVersion, h.IndexFile, h.IndexFile, h.IndexFile)
		return
	}
	fmt.Fprintf(g.stdout, "origin index version %d lists it\n", h.IndexVersion)
}
