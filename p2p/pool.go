package p2p

import (
	"bufio"
	"io"
	"sync"
)

// Every chunk stream needs a read or write buffer and a frame buffer, and
// every other stream a small reader or writer. They are pooled: fresh for
// each stream, they were half the bytes a large swarm allocated, and fresh
// memory costs page faults and clearing before it holds a byte
// (docs/decisions/0015).
var (
	chunkReaders = &bufPool[*bufio.Reader, io.Reader]{p: sync.Pool{New: func() any { return bufio.NewReaderSize(nil, chunkReadBuffer) }}}
	chunkWriters = &bufPool[*bufio.Writer, io.Writer]{p: sync.Pool{New: func() any { return bufio.NewWriterSize(nil, chunkWriteBuffer) }}}
	// smallReaders read requests and answers of a few bytes; smallWriters
	// coalesce a status byte and a short body into one muxer frame.
	smallReaders = &bufPool[*bufio.Reader, io.Reader]{p: sync.Pool{New: func() any { return bufio.NewReaderSize(nil, smallFrame) }}}
	smallWriters = &bufPool[*bufio.Writer, io.Writer]{p: sync.Pool{New: func() any { return bufio.NewWriterSize(nil, smallFrame) }}}
	// frameBufs holds *[]byte, grown to the largest frame each has held.
	frameBufs = sync.Pool{New: func() any { return new([]byte) }}
)

// bufPool pools bufio readers (T *bufio.Reader, S io.Reader) or writers
// (T *bufio.Writer, S io.Writer): get attaches one to a stream and put
// detaches it, so that a pooled buffer never keeps an ended stream alive.
type bufPool[T interface{ Reset(S) }, S any] struct{ p sync.Pool }

func (bp *bufPool[T, S]) get(s S) T {
	v := bp.p.Get().(T)
	v.Reset(s)
	return v
}

func (bp *bufPool[T, S]) put(v T) {
	var none S
	v.Reset(none)
	bp.p.Put(v)
}
