package testnet

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// sink accepts connections and reads each to its end, reporting the bytes.
func sink(t testing.TB) (string, <-chan int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan int64, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				n, _ := io.Copy(io.Discard, c)
				c.Close()
				got <- n
			}()
		}
	}()
	return ln.Addr().String(), got
}

// echoServer accepts one connection and sends back what it reads.
func echoServer(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		io.Copy(c, c)
		c.Close()
	}()
	return ln.Addr().String()
}

// shaped dials target and shapes the connection with up and down.
func shaped(t testing.TB, target string, up, down Path) *ShapedConn {
	t.Helper()
	raw, err := net.Dial("tcp", target)
	if err != nil {
		t.Fatal(err)
	}
	c := Shape(raw, up, down)
	t.Cleanup(func() { c.Close() })
	return c
}

// send writes n bytes to c, closes its side and reads to the end.
func send(t testing.TB, c *ShapedConn, n int64) {
	t.Helper()
	if _, err := io.CopyN(c, rand.Reader, n); err != nil {
		t.Error(err)
	}
	c.CloseWrite()
	io.Copy(io.Discard, c)
}

func TestShapedConnCarriesBothWaysAndCounts(t *testing.T) {
	echo := echoServer(t)
	up, down := NewPipe("up", 0, 0), NewPipe("down", 0, 0)
	c := shaped(t, echo, Path{up}, Path{down})
	msg := make([]byte, 100<<10)
	rand.Read(msg)
	go func() {
		c.Write(msg)
		c.CloseWrite()
	}()
	back, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(back, msg) {
		t.Fatalf("echo through the shaped conn: %d bytes, %v", len(back), err)
	}
	if up.Bytes() != int64(len(msg)) || down.Bytes() != int64(len(msg)) {
		t.Errorf("counted %d up and %d down, want %d each", up.Bytes(), down.Bytes(), len(msg))
	}
}

// The lower bounds on time below hold however loaded the machine is: a pipe
// may be slower than its rate, never faster. How close to the rate it gets
// is measured by BenchmarkPipeAccuracy.

func TestPipeNeverExceedsItsRate(t *testing.T) {
	for _, rate := range []int{2 << 20, 48 << 20} { // pieces of 16 KiB, of 64 KiB
		t.Run(fmt.Sprintf("%d B/s", rate), func(t *testing.T) {
			n := int64(rate) // a second's worth
			pipe := NewPipe("wan", int64(rate), 0)
			target, got := sink(t)
			c := shaped(t, target, Path{pipe}, nil)
			start := time.Now()
			send(t, c, n)
			if m := <-got; m != n {
				t.Fatalf("received %d bytes, want %d", m, n)
			}
			if el, min := time.Since(start), time.Duration(float64(n-int64(pipe.piece))/float64(rate)*float64(time.Second)); el < min*95/100 {
				t.Errorf("%d bytes through a %d B/s pipe took %s, less than %s", n, rate, el, min)
			}
		})
	}
}

func TestFlowsThroughOneSitePipeShareIt(t *testing.T) {
	const rate, n = 2 << 20, 1 << 20
	siteIn := NewPipe("site wan in", rate, 0)
	var wg sync.WaitGroup
	start := time.Now()
	for range 2 {
		target, got := sink(t)
		// Two peers of the site, each with a connection of its own,
		// both downloading through the site's one WAN pipe.
		c := shaped(t, target, Path{siteIn}, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			send(t, c, n)
			<-got
		}()
	}
	wg.Wait()
	if el, min := time.Since(start), time.Duration(float64(2*n-pieceSize)/rate*float64(time.Second)); el < min*95/100 {
		t.Errorf("2 × %d bytes through one %d B/s pipe took %s, less than %s", n, rate, el, min)
	}
	if siteIn.Bytes() != 2*n {
		t.Errorf("the site pipe counted %d bytes, want %d", siteIn.Bytes(), 2*n)
	}
}

func TestLatencyDelaysEveryByte(t *testing.T) {
	echo := echoServer(t)
	const latency = 40 * time.Millisecond
	c := shaped(t, echo, Path{NewPipe("up", 0, latency)}, Path{NewPipe("down", 0, latency)})
	start := time.Now()
	c.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	if rtt := time.Since(start); rtt < 2*latency {
		t.Errorf("round trip %s, want at least %s", rtt, 2*latency)
	}
}

// BenchmarkPipeAccuracy reports how close shaped flows get to the rate they
// are given: one flow, two flows sharing a site pipe, both directions of a
// connection at once (separate pipes, so each should get the whole rate), and
// one flow over a path with 50 ms of latency (a delay
// line must keep it at the rate, where stop-and-wait would not).
func BenchmarkPipeAccuracy(b *testing.B) {
	const rate, n = 8 << 20, 16 << 20
	measure := func(fn func()) float64 {
		start := time.Now()
		fn()
		return time.Since(start).Seconds()
	}
	for b.Loop() {
		target, got := sink(b)
		c := shaped(b, target, Path{NewPipe("wan", rate, 0)}, nil)
		one := measure(func() { send(b, c, n); <-got })
		b.ReportMetric(float64(n)/one/rate, "one_flow_of_rate")

		shared := NewPipe("site", rate, 0)
		t1, g1 := sink(b)
		t2, g2 := sink(b)
		c1, c2 := shaped(b, t1, Path{shared}, nil), shaped(b, t2, Path{shared}, nil)
		two := measure(func() {
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); send(b, c1, n/2); <-g1 }()
			go func() { defer wg.Done(); send(b, c2, n/2); <-g2 }()
			wg.Wait()
		})
		b.ReportMetric(float64(n)/two/rate, "two_flows_of_rate")

		both := duplexRate(b, rate, n/2)
		b.ReportMetric(both, "each_direction_of_rate")

		lt, lg := sink(b)
		cl := shaped(b, lt, Path{NewPipe("far", rate, 50*time.Millisecond)}, nil)
		far := measure(func() { send(b, cl, n); <-lg })
		b.ReportMetric(float64(n)/far/rate, "latency_50ms_of_rate")

		// A LAN link, moved in 64 KiB pieces.
		const lan = 16 * rate
		tf, gf := sink(b)
		cf := shaped(b, tf, Path{NewPipe("lan", lan, 250*time.Microsecond)}, nil)
		fast := measure(func() { send(b, cf, 8*n); <-gf })
		b.ReportMetric(float64(8*n)/fast/lan, "lan_128MiBps_of_rate")
	}
}

// duplexRate sends n bytes each way at once over a connection whose two
// directions cross separate pipes of the given rate, and returns the rate of
// each direction over the given one.
func duplexRate(b *testing.B, rate, n int64) float64 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() { io.CopyN(c, rand.Reader, n); c.(*net.TCPConn).CloseWrite() }()
		io.Copy(io.Discard, c)
	}()
	c := shaped(b, ln.Addr().String(), Path{NewPipe("up", rate, 0)}, Path{NewPipe("down", rate, 0)})
	start := time.Now()
	go func() { io.CopyN(c, rand.Reader, n); c.CloseWrite() }()
	if got, _ := io.Copy(io.Discard, c); got != n {
		b.Fatalf("received %d of %d bytes", got, n)
	}
	return float64(n) / time.Since(start).Seconds() / float64(rate)
}

// libp2p's handshakes bound their reads and writes with deadlines, so a
// shaped conn must honour them as a socket does, and recover when they are
// lifted.
func TestShapedConnHonoursDeadlines(t *testing.T) {
	echo := echoServer(t)
	c := shaped(t, echo, Path{NewPipe("up", 0, 0)}, Path{NewPipe("down", 0, 0)})
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	buf := make([]byte, 4)
	if _, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v, want %v", err, os.ErrDeadlineExceeded)
	}
	c.SetDeadline(time.Now().Add(-time.Second))
	if _, err := c.Write([]byte("ping")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write past the deadline: %v, want %v", err, os.ErrDeadlineExceeded)
	}
	c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("after the deadline was lifted: %q, %v", buf, err)
	}
	c.Close()
	if _, err := c.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after close: %v, want %v", err, net.ErrClosed)
	}
}
