package p2p

import (
	"bufio"
	"context"
	"io"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"golang.org/x/sync/errgroup"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

// benchNode is a swarm node over an on-disk store, as in production.
type benchNode struct {
	h        host.Host
	s        *store.Disk
	notifier *HaveNotifier
}

func newBenchNode(b *testing.B, m *manifest.Manifest, id cid.Cid) *benchNode {
	b.Helper()
	h, err := NewHost(context.Background(), HostConfig{ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}})
	if err != nil {
		b.Fatal(err)
	}
	s, err := store.OpenDisk(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	n := &benchNode{h: h, s: s, notifier: NewHaveNotifier()}
	cs := NewChunkService(h, s, ChunkConfig{})
	hs := NewHaveService(h, releases{id: m.ChunkIDs()}, s, n.notifier, HaveConfig{})
	b.Cleanup(func() { hs.Close(); cs.Close(); h.Close() })
	return n
}

func (n *benchNode) know(nodes ...*benchNode) []peer.ID {
	var ids []peer.ID
	for _, o := range nodes {
		if o != n {
			n.h.Peerstore().AddAddrs(o.h.ID(), o.h.Addrs(), peerstore.PermanentAddrTTL)
			ids = append(ids, o.h.ID())
		}
	}
	return ids
}

// seedWith stores the chunks of a generated release of size bytes in a new
// seed node and returns it with the release and its stored size.
func seedWith(b *testing.B, size int64) (*benchNode, *manifest.Manifest, cid.Cid, int64) {
	b.Helper()
	m, id, chunks := testRelease(b, size, 11)
	seed := newBenchNode(b, m, id)
	batch := seed.s.NewBatch()
	var stored int64
	for _, c := range chunks {
		added, err := batch.Add(context.Background(), c)
		if err != nil {
			b.Fatal(err)
		}
		stored += added.StoredSize
	}
	if err := batch.Commit(context.Background()); err != nil {
		b.Fatal(err)
	}
	return seed, m, id, stored
}

// rawStreamRate sends n bytes over one libp2p stream between two hosts and
// returns MB/s: what the transport alone moves on this machine.
func rawStreamRate(b *testing.B, from, to host.Host, n int64) float64 {
	b.Helper()
	const proto = "/patchctl/bench-raw/1.0.0"
	done := make(chan int64, 1)
	to.SetStreamHandler(proto, func(s network.Stream) {
		got, _ := io.Copy(io.Discard, s)
		s.Close()
		done <- got
	})
	defer to.RemoveStreamHandler(proto)
	from.Peerstore().AddAddrs(to.ID(), to.Addrs(), peerstore.PermanentAddrTTL)
	s, err := from.NewStream(context.Background(), to.ID(), proto)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	start := time.Now()
	w := bufio.NewWriterSize(s, 1<<20)
	for sent := int64(0); sent < n; sent += int64(len(buf)) {
		if _, err := w.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	w.Flush()
	s.CloseWrite()
	<-done
	return float64(n) / time.Since(start).Seconds() / 1e6
}

// storeRate decodes, verifies and stores every frame of the release from src
// into a new disk store with as many writers as a fetch keeps busy, and
// returns the rate in frame (wire) MB/s.
func storeRate(b *testing.B, src *store.Disk, m *manifest.Manifest) float64 {
	b.Helper()
	ids := m.ChunkIDs()
	frames := make([][]byte, len(ids))
	var total int64
	for i, id := range ids {
		f, err := src.GetFrame(context.Background(), id)
		if err != nil {
			b.Fatal(err)
		}
		frames[i] = f
		total += int64(len(f))
	}
	dst, err := store.OpenDisk(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	var g errgroup.Group
	g.SetLimit(DefaultStoreWriters)
	syscall.Sync()
	start := time.Now()
	for i := range ids {
		g.Go(func() error { return dst.PutFrame(context.Background(), ids[i], frames[i]) })
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	return float64(total) / time.Since(start).Seconds() / 1e6
}

// BenchmarkFetchOneSeedOneFetcher moves a 256 MiB release from one seed to
// one fetcher over loopback TCP, both with on-disk stores, and compares the
// rate with the slower of the raw libp2p stream and decompress + verify +
// store alone, all measured in the same run and in wire bytes.
func BenchmarkFetchOneSeedOneFetcher(b *testing.B) {
	seed, m, id, stored := seedWith(b, 256<<20)
	probe := newBenchNode(b, m, id)
	raw := rawStreamRate(b, probe.h, seed.h, 512<<20)
	st := storeRate(b, seed.s, m)
	b.ResetTimer()
	var rate, cpuPct float64
	for b.Loop() {
		f := newBenchNode(b, m, id)
		syscall.Sync() // start from a quiet disk
		start := time.Now()
		cpu0 := cpuTime()
		res, err := Fetch(context.Background(), f.h, f.s, m, id, f.know(seed), FetchConfig{Notifier: f.notifier})
		if err != nil {
			b.Fatal(err)
		}
		el := time.Since(start)
		rate = float64(res.BytesFetched) / el.Seconds() / 1e6
		cpuPct = 100 * (cpuTime() - cpu0).Seconds() / el.Seconds()
	}
	b.ReportMetric(raw, "raw_stream_MB/s")
	b.ReportMetric(st, "store_alone_MB/s")
	b.ReportMetric(rate, "fetch_MB/s")
	b.ReportMetric(100*rate/min(raw, st), "pct_of_slower")
	b.ReportMetric(float64(stored)/(1<<20), "release_stored_MiB")
	b.ReportMetric(cpuPct, "cpu_pct")
}

// BenchmarkFetchOneSeedSixteenFetchers has 16 fetchers take a 64 MiB release
// from one seed at once, each knowing all the others: the seed should send
// few copies, the fetchers the rest to each other.
func BenchmarkFetchOneSeedSixteenFetchers(b *testing.B) {
	seed, m, id, stored := seedWith(b, 64<<20)
	var copies, secs float64
	for b.Loop() {
		fetchers := make([]*benchNode, 16)
		for i := range fetchers {
			fetchers[i] = newBenchNode(b, m, id)
		}
		all := append([]*benchNode{seed}, fetchers...)
		var fromSeed int64
		var mu sync.Mutex
		var g errgroup.Group
		start := time.Now()
		for _, f := range fetchers {
			peers := f.know(all...)
			g.Go(func() error {
				res, err := Fetch(context.Background(), f.h, f.s, m, id, peers, FetchConfig{Notifier: f.notifier})
				if err != nil {
					return err
				}
				mu.Lock()
				fromSeed += res.Peers[seed.h.ID()].WireBytes
				mu.Unlock()
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
		secs = time.Since(start).Seconds()
		copies = float64(fromSeed) / float64(stored)
	}
	b.ReportMetric(copies, "seed_copies")
	b.ReportMetric(secs, "seconds")
	b.ReportMetric(16*float64(stored)/secs/1e6, "swarm_MB/s")
}

// cpuTime is the CPU time this process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
