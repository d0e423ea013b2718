package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
)

func lsCommand() *cli.Command {
	return &cli.Command{
		Name:      "ls",
		Usage:     "list the releases held here, with how many of their chunks are present",
		ArgsUsage: " ",
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 0, "no arguments"); err != nil {
				return err
			}
			return runLs(c, globalsOf(c))
		},
	}
}

func runLs(c *cli.Context, g globals) error {
	s, cat, err := g.openStoreForReading()
	if err != nil {
		return err
	}
	defer s.Close()
	releases, bad, err := cat.List()
	if err != nil {
		return err
	}
	warnUnreadable(g, bad)
	type row struct {
		Name          string    `json:"name"`
		CID           string    `json:"cid"`
		Channel       string    `json:"channel"`
		Sequence      uint64    `json:"sequence"`
		Files         int       `json:"files"`
		TotalBytes    int64     `json:"total_bytes"`
		Chunks        int       `json:"chunks"`
		ChunksPresent int       `json:"chunks_present"`
		Created       time.Time `json:"created"`
		Expires       time.Time `json:"expires"`
	}
	rows := []row{}
	for _, r := range releases {
		ids := r.Manifest.ChunkIDs()
		present := 0
		for _, id := range ids {
			ok, err := s.Has(c.Context, id)
			if err != nil {
				return err
			}
			if ok {
				present++
			}
		}
		m := r.Manifest
		rows = append(rows, row{m.Name, r.CID.String(), m.Channel, m.Sequence, len(m.Files), m.TotalSize(), len(ids), present, m.Created, m.Expires})
	}
	if g.json {
		return g.printJSON(map[string]any{"releases": rows})
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tCHANNEL\tSEQ\tFILES\tSIZE\tCHUNKS\tEXPIRES\tCID")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%d/%d\t%s\t%s\n", r.Name, r.Channel, r.Sequence, r.Files, humanBytes(r.TotalBytes), r.ChunksPresent, r.Chunks, r.Expires.Format("2006-01-02"), r.CID)
	}
	return tw.Flush()
}
