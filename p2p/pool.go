package p2p

import (
	"bufio"
	"io"
	"sync"
)

// Every chunk stream needs a read or write buffer and a frame buffer, and
// every other stream a small reader or writer. They are pooled: fresh for
// each stream, they were half the bytes a 500-node testnet allocated, and
// fresh memory costs page faults and clearing before it holds a byte.
var (
	chunkReaders = pool[*bufio.Reader]{p: sync.Pool{New: func() any { return bufio.NewReaderSize(nil, chunkReadBuffer) }}}
	chunkWriters = pool[*bufio.Writer]{p: sync.Pool{New: func() any { return bufio.NewWriterSize(nil, chunkWriteBuffer) }}}
	frameBufs    = pool[*[]byte]{p: sync.Pool{New: func() any { return new([]byte) }}}
	smallReaders = pool[*bufio.Reader]{p: sync.Pool{New: func() any { return bufio.NewReaderSize(nil, smallFrame) }}}
	smallWriters = pool[*bufio.Writer]{p: sync.Pool{New: func() any { return bufio.NewWriterSize(nil, smallFrame) }}}
)

// pool is a sync.Pool of T.
type pool[T any] struct{ p sync.Pool }

func (p *pool[T]) get() T  { return p.p.Get().(T) }
func (p *pool[T]) put(v T) { p.p.Put(v) }

// getReader returns a small pooled reader of r, for requests and answers of
// a few bytes; putReader returns it.
func getReader(r io.Reader) *bufio.Reader {
	br := smallReaders.get()
	br.Reset(r)
	return br
}

func putReader(br *bufio.Reader) {
	br.Reset(nil)
	smallReaders.put(br)
}

// getWriter returns a small pooled writer to w, which coalesces a status
// byte and a short body into one muxer frame; putWriter returns it.
func getWriter(w io.Writer) *bufio.Writer {
	bw := smallWriters.get()
	bw.Reset(w)
	return bw
}

func putWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	smallWriters.put(bw)
}
