package manifest

import (
	"bytes"
	"encoding/binary"
	"io"
	"math"
)

// Archive-aware chunking.
//
// Service packs are ZIP files or tarballs, and consecutive packs differ in a
// few members. Plain content-defined chunking loses most of that: every
// member's header carries its path and times, so a renamed top folder or new
// mtimes change every header, and small members sit many to a chunk, so
// nearly every chunk changes. ArchiveChunker walks the stream instead: it
// cuts before and after every member header, so a header is a chunk of its
// own and a member's data (with its ZIP data descriptor, or its tar padding)
// is chunked on its own — one chunk when small, FastCDC inside when large.
// Unchanged members then cost nothing to ship again, whatever their headers
// say.
//
// The walker only chooses where to cut: chunks are always consecutive
// pieces of the input, so a header that lies, a truncated archive or a
// hostile one can cost dedupe, never a wrong byte. Anything it does not
// recognise is cut by FastCDC exactly as Chunker cuts it, and it keeps no
// more than a fixed window of the stream in memory.

// ChunkKind says what part of an archive a chunk holds.
type ChunkKind uint8

const (
	// ChunkOther is anything outside a member: a file that is not an
	// archive, a ZIP's central directory, a tar's end blocks.
	ChunkOther ChunkKind = iota
	// ChunkHeader is a member's header: a ZIP local file header; a tar
	// header block with any pax or GNU long-name blocks before it.
	ChunkHeader
	// ChunkData is a member's data: for ZIP with its data descriptor, for
	// tar with its padding to the next block.
	ChunkData
)

func (k ChunkKind) String() string {
	switch k {
	case ChunkHeader:
		return "header"
	case ChunkData:
		return "data"
	}
	return "other"
}

// ChunkInfo describes a chunk from an ArchiveChunker.
type ChunkInfo struct {
	Kind ChunkKind
	// Member numbers the member the chunk belongs to, from 1 in the order
	// members appear in the stream; 0 for ChunkOther.
	Member int
	// Name is the member's path in its archive (at most maxMemberName
	// bytes). A member of an archive found inside another member's data
	// is named outer!/inner, as Java names the entries of nested jars.
	Name string
}

const (
	// maxArchiveLevel is how deep archives inside members (a jar stored in
	// a war, a zip in a tarball) are walked.
	maxArchiveLevel = 3
	// maxArchiveMembers bounds the members walked in one stream. Each
	// costs at least two chunks (~90 bytes of manifest each), so past it
	// the rest of the stream is cut by FastCDC alone, and the manifest of
	// an absurd archive stays well inside MaxManifestSize.
	maxArchiveMembers = 1 << 17
	// maxZipHeader bounds the ZIP local file headers taken as such. The
	// format allows 128 KiB (a name and an extra field of up to 64 KiB
	// each); real ones hold a path and a few small extra fields, or up to
	// 4 KiB of alignment padding (zipalign). A longer one is cut as data.
	// The bound sets how far the walker looks ahead, and so its buffer:
	// a smaller buffer stays in cache, which the boundary search notices.
	maxZipHeader = 32 << 10
	// maxTarGroup bounds a tar member's header blocks together with the
	// pax records and long names before them, for the same reason.
	maxTarGroup = 32 << 10
	// maxMemberName bounds ChunkInfo.Name.
	maxMemberName = 1024
	// archiveSlack is what the walker sees beyond the longest chunk: a
	// header starting just before Max, or a data descriptor after it.
	archiveSlack = maxZipHeader + 64
	// resyncWindow is how far past the end its header gives a member's
	// data the walker looks for the next header when the bytes at that end
	// are not one: the data grew (an insertion), and ends where the next
	// member starts. The walker sees this much more than archiveSlack.
	resyncWindow = 32 << 10
)

// ZIP signatures and sizes.
const (
	zipLocalSig   = 0x04034b50
	zipDescSig    = 0x08074b50
	zipLocalLen   = 30
	zipDescLen    = 16 // signature, CRC-32, 32-bit sizes
	zipDesc64Len  = 24 // signature, CRC-32, 64-bit sizes
	zip64ExtraID  = 0x0001
	zipMaxExtras  = 64 // extra fields looked through for the ZIP64 one
	zipUnknownLen = -1
)

var zipLocalMagic = []byte("PK\x03\x04")

type frameKind uint8

const (
	// frameBlob is bytes of unknown structure (the whole stream, a
	// member's data): cut by FastCDC, before any ZIP local header or tar
	// header found in them, where an archive walk starts.
	frameBlob frameKind = iota
	// frameUnit is bytes cut by FastCDC alone: a header, member data
	// whose end was found by its data descriptor, an archive's end.
	frameUnit
	// frameZip is a run of ZIP members: a local header, its data, the
	// next local header... It ends at the first bytes that are not one,
	// and becomes frameZipDir if those are the central directory.
	frameZip
	// frameTar is a run of tar members, ending at the first block that is
	// not a valid header; it becomes frameTarEnd if that is a zero block.
	frameTar
	// frameZipStream is the data of a ZIP member whose size only its data
	// descriptor tells (flag bit 3 with zero sizes): cut by FastCDC until
	// a descriptor whose size matches the bytes before it is found, or
	// the next local header.
	frameZipStream
	// frameZipDir is a ZIP's central directory and end records, cut by
	// FastCDC: walked record by record to the end of the end of central
	// directory record, so that bytes appended to an archive do not
	// change its last chunk.
	frameZipDir
	// frameTarEnd is a tar's end-of-archive zero blocks, cut by FastCDC
	// up to the first block that is not zeros, for the same reason.
	frameTarEnd
)

// frame is one level of the walk: the stack holds the whole stream at the
// bottom, then an archive, a member's data, an archive inside it...
type frame struct {
	kind       frameKind
	level      int   // archives this frame is inside
	start, end int64 // stream offsets; the bottom frame never ends
	info       ChunkInfo
	prefix     string // zip and tar frames: prefix of their members' names
	// frameBlob: no archive starts in [.., searched) except at cand (-1:
	// none found yet), where one of candKind starts.
	searched, cand int64
	candKind       frameKind
	// opaque: compressed member data, where no archive can be seen.
	opaque bool
	// ZIP member data: a data descriptor follows end and belongs to the
	// member; its length is settled once its bytes are in view.
	descPending bool
	// Member data: what follows the end is still to be checked, once the
	// end is near (checkDataEnd).
	checkEnd  bool
	zip64     bool
	dataStart int64 // frameZipStream and descriptors: where the data began
}

// ArchiveChunker cuts a stream as Chunker does, but at the members of ZIP
// (ZIP64, data descriptors, any compression method; JAR, WAR and APK are
// ZIPs) and tar (ustar, pax, GNU) archives it recognises by their content:
// every member's header is a chunk of its own, its data is chunked on its
// own, and archives inside members are walked too, three levels deep. The
// chunks of a stream it does not recognise are exactly Chunker's.
type ArchiveChunker struct {
	c       *Chunker
	pos     int64 // stream offset of the next chunk
	stack   []frame
	members int
	info    ChunkInfo
}

// NewArchiveChunker returns an archive-aware chunker reading r. It panics if
// p is invalid, as NewChunker does; p.Method is not consulted.
func NewArchiveChunker(r io.Reader, p ChunkParams) *ArchiveChunker {
	return &ArchiveChunker{
		c:     newChunker(r, p, p.Max+archiveSlack+resyncWindow),
		stack: []frame{{kind: frameBlob, end: math.MaxInt64, cand: -1}},
	}
}

// Next returns the next chunk, at most p.Max bytes, with Chunker.Next's
// contract: the slice is valid until the following call, io.EOF ends the
// stream, and a read error is returned as soon as it is seen.
func (a *ArchiveChunker) Next() ([]byte, error) {
	c := a.c
	data, err := c.unconsumed()
	if err != nil {
		return nil, err
	}
	n := a.cut(data, c.err != nil)
	c.start += n
	a.pos += int64(n)
	return data[:n], nil
}

// Info describes the chunk the last call to Next returned.
func (a *ArchiveChunker) Info() ChunkInfo { return a.info }

// Members is how many archive members the walk has found so far.
func (a *ArchiveChunker) Members() int { return a.members }

// cut returns the length of the next chunk at the start of data, which holds
// at least look bytes unless the stream ends with it (eof). It walks the
// frame stack until the top frame cuts; every other step pushes a frame that
// starts here or pops one that ended, so the loop ends.
func (a *ArchiveChunker) cut(data []byte, eof bool) int {
	for {
		top := len(a.stack) - 1
		f := &a.stack[top]
		if f.descPending {
			a.settleDescriptor(top, data, eof)
		}
		if f.checkEnd && !f.descPending && f.end-a.pos <= int64(a.c.p.Max+archiveSlack) {
			f.checkEnd = false
			a.checkDataEnd(top, data)
		}
		if top > 0 && a.pos >= f.end {
			a.pop(false)
			continue
		}
		avail := len(data)
		if left := f.end - a.pos; left < int64(avail) {
			avail = int(left)
		}
		view := data[:avail]
		switch f.kind {
		case frameUnit:
			a.info = f.info
			return a.c.boundary(view)
		case frameBlob:
			q, kind := a.findArchive(top, view)
			if q >= 0 && a.pos+int64(q) < f.end && a.sizeWasWrong(top, kind, q) {
				f.end = a.pos + int64(q)
				continue
			}
			if q == 0 {
				a.push(frame{kind: kind, level: f.level + 1, start: a.pos, end: f.end, prefix: a.prefixFor(f)})
				continue
			}
			if q > 0 {
				view = view[:q]
			}
			a.info = f.info
			return a.c.boundary(view)
		case frameZip:
			if a.zipMember(f, view) {
				continue
			}
			if len(view) >= 4 && zipDirRecord(view) != zipRecordBad {
				f.kind, f.searched = frameZipDir, a.pos
				continue
			}
			a.pop(true)
		case frameTar:
			if a.tarMember(f, view) {
				continue
			}
			if len(view) >= tarBlock && bytes.Equal(view[:tarBlock], zeroBlock[:]) {
				f.kind, f.searched = frameTarEnd, a.pos
				continue
			}
			a.pop(true)
		case frameZipDir, frameTarEnd:
			if a.findArchiveEnd(f, view, len(view) < len(data) || eof) {
				continue
			}
			a.info = f.info
			return a.c.boundary(view)
		case frameZipStream:
			if e := a.findDescriptor(f, view); e >= 0 {
				f.end = a.pos + int64(e)
				f.kind = frameUnit
				continue
			}
			a.info = f.info
			return a.c.boundary(view)
		}
	}
}

func (a *ArchiveChunker) push(f frame) {
	if f.kind == frameBlob {
		f.cand = -1
	}
	a.stack = append(a.stack, f)
}

// pop ends the top frame. An archive frame that ends where it began found no
// member after all (failed): its parent must not find it there again.
func (a *ArchiveChunker) pop(failed bool) {
	f := a.stack[len(a.stack)-1]
	a.stack = a.stack[:len(a.stack)-1]
	if failed && f.start == a.pos {
		p := &a.stack[len(a.stack)-1]
		p.cand = -1
		p.searched = max(p.searched, a.pos+1)
	}
}

// canWalk reports whether archives may be looked for in blob f.
func (a *ArchiveChunker) canWalk(f *frame) bool {
	return !f.opaque && f.level < maxArchiveLevel && a.members < maxArchiveMembers
}

// prefixFor is the name prefix of members of an archive found in blob f.
func (a *ArchiveChunker) prefixFor(f *frame) string {
	if f.info.Kind != ChunkData {
		return ""
	}
	return f.info.Name + "!/"
}

// memberName joins prefix and name, bounded by maxMemberName.
func memberName(prefix string, name []byte) string {
	s := prefix + string(name)
	if len(s) > maxMemberName {
		s = s[:maxMemberName]
	}
	return s
}

// findArchive returns the offset in view of the first ZIP local header or
// tar header in blob stack[i] that could end the next chunk (before Max),
// and the frame that walks it; -1 if there is none. What it rules out is
// remembered in the frame, so every byte is searched once.
//
// Looking everywhere, not only where a blob starts, is what lets a walk
// that lost its place resume: a tar header is found at any byte offset, so
// an insertion of any length, a damaged header or a member shorter than its
// header says costs the bytes up to the next good header, not the rest of
// the stream (docs/decisions/0050). Member data where no archive may be
// walked (compressed, or nested too deep) is searched for headers of its own
// archive only: see sizeWasWrong.
func (a *ArchiveChunker) findArchive(i int, view []byte) (int, frameKind) {
	f := &a.stack[i]
	zipOK, tarOK := true, true
	switch {
	case a.members >= maxArchiveMembers:
		return -1, frameBlob
	case !a.canWalk(f):
		if i == 0 || f.info.Kind != ChunkData {
			return -1, frameBlob
		}
		zipOK, tarOK = a.stack[i-1].kind == frameZip, a.stack[i-1].kind == frameTar
	}
	if f.cand >= a.pos {
		return int(f.cand - a.pos), f.candKind
	}
	f.cand = -1
	lim := min(len(view), a.c.p.Max)
	from := 0
	if f.searched > a.pos {
		from = int(min(f.searched-a.pos, int64(lim)))
	}
	q, kind := -1, frameZip
	if zipOK {
		q = findZipLocal(view, from, lim)
	}
	// A tar header where a ZIP one starts comes first, as it would at
	// the start of a member's data.
	tlim := lim
	if q >= 0 {
		tlim = q + 1
	}
	if tarOK {
		if t := findTarHeader(view, from, tlim); t >= 0 {
			q, kind = t, frameTar
		}
	}
	if q < 0 {
		f.searched = a.pos + int64(lim)
		return -1, frameBlob
	}
	f.cand, f.candKind = a.pos+int64(q), kind
	f.searched = f.cand
	return q, kind
}

// sizeWasWrong reports whether an archive of the given kind found q bytes
// into view, in blob stack[i], ends that blob instead of starting an
// archive inside it: the blob is a member's data, the header is of the
// member's own archive, and it is not where the data starts or the data may
// not be walked. Then the size in the member's header was wrong (damaged,
// or the member shrank without it) and the walk goes on at that header, at
// the member's level, rather than in an archive nested in it, which would
// take the rest of the stream with it once nesting is too deep.
func (a *ArchiveChunker) sizeWasWrong(i int, kind frameKind, q int) bool {
	f := &a.stack[i]
	if i == 0 || f.info.Kind != ChunkData || a.stack[i-1].kind != kind {
		return false
	}
	return a.pos+int64(q) > f.start || !a.canWalk(f)
}

// findZipLocal returns the offset of the first valid ZIP local header that
// starts in view[from:lim], or -1. A header starting before Max is wholly in
// view unless the stream or the frame ends first, and then it is no header.
func findZipLocal(view []byte, from, lim int) int {
	for from < lim {
		i := bytes.Index(view[from:min(len(view), lim+len(zipLocalMagic)-1)], zipLocalMagic)
		if i < 0 {
			return -1
		}
		q := from + i
		if _, ok := parseZipLocal(view[q:]); ok {
			return q
		}
		from = q + 1
	}
	return -1
}

// findTarHeader returns the offset of the first tar header that starts in
// view[from:lim], at any byte offset, or -1. Candidates are found by their
// magic, 257 bytes into the block; resyncTarHeader then checks the
// checksum, which bytes that merely contain the magic almost never pass,
// and the fields.
func findTarHeader(view []byte, from, lim int) int {
	for from < lim {
		lo, hi := from+tarMagicOff, min(len(view), lim-1+tarMagicOff+len(tarMagic))
		if lo >= hi {
			return -1
		}
		i := bytes.Index(view[lo:hi], tarMagic)
		if i < 0 {
			return -1
		}
		q := from + i
		if resyncTarHeader(view[q:]) {
			return q
		}
		from = q + 1
	}
	return -1
}

// zipMember pushes the frames of the ZIP member whose local header starts
// view: its data, then its header on top. It reports false if view does not
// start with a valid local header.
func (a *ArchiveChunker) zipMember(f *frame, view []byte) bool {
	if a.members >= maxArchiveMembers {
		return false
	}
	h, ok := parseZipLocal(view)
	if !ok {
		return false
	}
	a.members++
	// Pushing may move the stack: f is not used after the first push.
	level, limit, name := f.level, f.end, memberName(f.prefix, h.name)
	hdrEnd := a.pos + int64(h.hlen)
	data := ChunkInfo{Kind: ChunkData, Member: a.members, Name: name}
	switch {
	case h.csize == zipUnknownLen:
		a.push(frame{kind: frameZipStream, level: level, start: hdrEnd, end: limit, info: data, zip64: h.zip64, dataStart: hdrEnd})
	default:
		end := min(addClamp(hdrEnd, h.csize), limit)
		if end > hdrEnd || h.desc {
			a.push(frame{kind: frameBlob, level: level, start: hdrEnd, end: end, info: data, opaque: h.method != 0, descPending: h.desc, checkEnd: true, zip64: h.zip64, dataStart: hdrEnd})
		}
	}
	a.push(frame{kind: frameUnit, level: level, start: a.pos, end: hdrEnd, info: ChunkInfo{Kind: ChunkHeader, Member: a.members, Name: name}})
	return true
}

// settleDescriptor extends the member data frame at stack[i] over the data
// descriptor after its end, once the descriptor's bytes are in view. A
// descriptor is taken only if the size it states is the data's: then an
// unchanged member's data and descriptor are an unchanged chunk.
func (a *ArchiveChunker) settleDescriptor(i int, data []byte, eof bool) {
	f := &a.stack[i]
	rel := f.end - a.pos
	if rel < 0 || rel+zipDesc64Len > int64(len(data)) && !eof {
		return
	}
	f.descPending = false
	if rel > int64(len(data)) {
		return
	}
	d := descriptorLen(data[rel:], f.end-f.dataStart, f.zip64)
	parent := a.stack[i-1].end
	f.end = min(f.end+int64(d), parent)
}

// findArchiveEnd follows the records of an archive's end, frame f, from
// f.searched as far as view shows them whole: a ZIP's central directory
// headers and end records, or a tar's zero blocks. It reports true, having
// made f a unit, once it knows where the end stops: after the end of
// central directory record and its comment, before the first block that is
// not zeros, or where the records stop making sense. whole says view holds
// all the frame or the stream has left.
//
// The end is known before any cut could reach it: a record is read once it
// lies within the look-ahead, which reaches further than Max past the next
// cut. So the result does not depend on how the reader delivered the bytes.
func (a *ArchiveChunker) findArchiveEnd(f *frame, view []byte, whole bool) bool {
	for {
		// Records are read before the cuts reach them (see above), so
		// rel is never negative; a hostile input must not find out.
		rel := max(int(f.searched-a.pos), 0)
		b := view[rel:]
		n := 0
		last := false
		if f.kind == frameTarEnd {
			switch {
			case len(b) < tarBlock:
				n = zipRecordShort
			case !bytes.Equal(b[:tarBlock], zeroBlock[:]):
				n = zipRecordBad
			default:
				n = tarBlock
			}
		} else {
			n = zipDirRecord(b)
			last = n > 0 && binary.LittleEndian.Uint32(b) == zipEndSig
		}
		switch {
		case n == zipRecordShort:
			if !whole {
				return false
			}
			// Cut short by the stream or the frame: the end runs to it.
			f.end = a.pos + int64(len(view))
		case n == zipRecordBad:
			f.end = f.searched
		case last:
			f.end = f.searched + int64(n)
		default:
			f.searched += int64(n)
			continue
		}
		f.kind = frameUnit
		return true
	}
}

// What zipDirRecord returns for bytes that are not a whole record.
const (
	zipRecordBad   = -1 // not a central directory or end record
	zipRecordShort = -2 // one, but longer than the bytes given
)

const (
	zipDirSig   = 0x02014b50
	zipEndSig   = 0x06054b50
	zipEnd64Sig = 0x06064b50
)

// zipDirRecord returns the length of the central directory header or end
// record at the start of b, zipRecordShort if b ends first, or
// zipRecordBad. Central directory headers longer than maxZipHeader count as
// bad, so that every record fits in the look-ahead beyond Max.
func zipDirRecord(b []byte) int {
	if len(b) < 4 {
		return zipRecordShort
	}
	le16 := func(i int) int { return int(binary.LittleEndian.Uint16(b[i:])) }
	var fixed, n int
	switch binary.LittleEndian.Uint32(b) {
	case zipDirSig: // name, extra field and comment lengths at 28
		fixed = 46
		if len(b) >= fixed {
			if n = fixed + le16(28) + le16(30) + le16(32); n > maxZipHeader {
				return zipRecordBad
			}
		}
	case zipEndSig: // comment length at 20
		fixed = 22
		if len(b) >= fixed {
			n = fixed + le16(20)
		}
	case zipEnd64Sig: // the size of the rest at 4
		fixed = 12
		if len(b) >= fixed {
			size := binary.LittleEndian.Uint64(b[4:])
			if size < 44 || size > maxZipHeader {
				return zipRecordBad
			}
			n = fixed + int(size)
		}
	case 0x07064b50: // ZIP64 end locator
		fixed, n = 20, 20
	case 0x05054b50: // digital signature, its size at 4
		fixed = 6
		if len(b) >= fixed {
			n = fixed + le16(4)
		}
	default:
		return zipRecordBad
	}
	if len(b) < fixed || len(b) < n {
		return zipRecordShort
	}
	return n
}

// checkDataEnd looks at what follows the member data of frame stack[i]
// (with its data descriptor, if any): where a walk expects the next member
// or the end of the archive. If something else is there and a valid header
// of the archive's kind starts within resyncWindow after it, the data grew
// by an insertion and the frame is extended to that header: its last chunk
// then ends where it did before the insertion, and matches. Otherwise the
// frame keeps its end, and the archive frame, failing there, hands the walk
// back to its parent's search (findArchive).
//
// It runs once, at the first cut whose chunk could reach the end: before
// that, no decision depended on where the frame ends. It reads only bytes
// up to resyncWindow past the end, which the look-ahead holds by then (or
// the stream ends first), so the outcome does not depend on how the reader
// delivered them.
func (a *ArchiveChunker) checkDataEnd(i int, data []byte) {
	f, parent := &a.stack[i], &a.stack[i-1]
	if f.end >= parent.end || f.end < a.pos {
		return
	}
	rel := int(f.end - a.pos)
	lim := int64(min(len(data), rel+resyncWindow))
	lim = min(lim, parent.end-a.pos)
	if int64(rel) >= lim {
		return
	}
	w := data[rel:lim]
	switch parent.kind {
	case frameTar:
		if len(w) < tarBlock || bytes.Equal(w[:tarBlock], zeroBlock[:]) || damagedTarHeader(w) {
			return
		}
		if _, _, ok := tarHeader(w); ok {
			return
		}
		if q := findTarHeader(w, 1, len(w)); q > 0 && !tarHeaderBefore(w, q) {
			f.end += int64(q)
		}
	case frameZip:
		if len(w) < zipLocalLen || zipRecordFollows(w) || damagedZipLocal(w) {
			return
		}
		if q := findZipLocal(w, 1, len(w)); q > 0 {
			f.end += int64(q)
		}
	}
}

// damagedTarHeader reports whether b starts with a header block that is
// only damaged: its magic is intact though tarHeader refused it. Its member
// is better cut on its own than as part of the data before it.
func damagedTarHeader(b []byte) bool {
	return bytes.HasPrefix(b[tarMagicOff:], tarMagic)
}

// tarHeaderBefore reports whether the block at the start of b, which
// tarHeader refused, is the header of a member that ends where the next
// valid header starts (at q): a header damaged in its magic.
func tarHeaderBefore(b []byte, q int) bool {
	size, ok := parseOctal(b[124:136])
	return ok && int64(q) == tarBlock+padBlock(size)
}

// damagedZipLocal reports whether b starts with a local header whose
// signature alone is damaged.
func damagedZipLocal(b []byte) bool {
	_, ok := parseZipLocalFields(b)
	return ok
}

// zipRecordFollows reports whether b starts with a record that may follow a
// member's data in a ZIP: a local header, the central directory, its end
// records, a digital signature or an archive extra data record.
func zipRecordFollows(b []byte) bool {
	switch binary.LittleEndian.Uint32(b) {
	case zipLocalSig, zipDirSig, zipEndSig, zipEnd64Sig, 0x07064b50, 0x05054b50, 0x08064b50:
		return true
	}
	return false
}

// descriptorLen returns the length of the data descriptor at the start of b
// for data of n bytes, or 0 if b does not start with one that says n. ZIP64
// archives use 64-bit sizes; which one was written is decided by the size
// that matches.
func descriptorLen(b []byte, n int64, zip64 bool) int {
	sig := 0
	if len(b) >= 4 && binary.LittleEndian.Uint32(b) == zipDescSig {
		sig = 4
	}
	// b[sig:] is CRC-32, compressed size, uncompressed size.
	try64 := func() bool {
		return len(b) >= sig+20 && binary.LittleEndian.Uint64(b[sig+4:]) == uint64(n)
	}
	try32 := func() bool {
		return len(b) >= sig+12 && n <= math.MaxUint32 && binary.LittleEndian.Uint32(b[sig+4:]) == uint32(n)
	}
	switch {
	case zip64 && try64():
		return sig + 20
	case try32():
		return sig + 12
	case try64():
		return sig + 20
	}
	return 0
}

// findDescriptor looks in view for the end of the member data of stream
// frame f: a data descriptor, with or without its signature, whose
// compressed size is the number of bytes between the data's start and the
// descriptor. It returns the offset in view just past the descriptor, or -1.
// A valid local header before any such descriptor ends the data too: the
// data or its descriptor was changed (an insertion makes every size wrong),
// and the walk resumes at the next member instead of cutting the rest of
// the stream as this member's data.
// Only ends within Max matter to the next cut, and those are all checked:
// view holds look bytes, far more than Max plus a descriptor or a header.
func (a *ArchiveChunker) findDescriptor(f *frame, view []byte) int {
	lim := min(len(view), a.c.p.Max+zipDesc64Len)
	from := 0
	if f.searched > a.pos {
		from = int(min(f.searched-a.pos, int64(lim)))
	}
	for from < lim {
		i := bytes.Index(view[from:lim], []byte("PK"))
		if i < 0 {
			break
		}
		q := from + i
		from = q + 1
		if q+4 > len(view) {
			break
		}
		at := a.pos + int64(q) // stream offset of the signature
		switch binary.LittleEndian.Uint32(view[q:]) {
		case zipDescSig:
			// Signed descriptor: the data is what lies before it.
			if d := descriptorLen(view[q:], at-f.dataStart, f.zip64); d > 0 {
				return q + d
			}
		case zipLocalSig, 0x02014b50, 0x06054b50, 0x06064b50:
			// The next header or the central directory, after a
			// descriptor without signature (12 or 20 bytes).
			for _, d := range []int{12, 20} {
				if q >= d && at-int64(d) >= f.dataStart && descriptorLen(view[q-d:q], at-int64(d)-f.dataStart, d == 20) == d {
					return q
				}
			}
			if _, ok := parseZipLocal(view[q:]); ok {
				return q
			}
		}
	}
	f.searched = a.pos + int64(max(from, lim-1))
	return -1
}

// zipLocal is what the walker takes from a ZIP local file header.
type zipLocal struct {
	hlen   int    // header length
	method int    // compression method; data not stored (0) shows no archive
	csize  int64  // compressed size, or zipUnknownLen if the descriptor tells
	desc   bool   // a data descriptor follows the data (flag bit 3)
	zip64  bool   // sizes were in a ZIP64 extra field
	name   []byte // the member's name
}

// parseZipLocal parses the local file header at the start of b. It accepts
// only what real writers produce: a known compression method, no unused flag
// bits, a name without NULs, the whole header within b. Being strict costs
// nothing but dedupe on broken archives, and keeps bytes that merely contain
// the signature from being taken for a header.
func parseZipLocal(b []byte) (zipLocal, bool) {
	if len(b) < zipLocalLen || binary.LittleEndian.Uint32(b) != zipLocalSig {
		return zipLocal{}, false
	}
	return parseZipLocalFields(b)
}

// parseZipLocalFields is parseZipLocal without the signature check.
func parseZipLocalFields(b []byte) (zipLocal, bool) {
	le16 := func(i int) int { return int(binary.LittleEndian.Uint16(b[i:])) }
	le32 := func(i int) uint32 { return binary.LittleEndian.Uint32(b[i:]) }
	if len(b) < zipLocalLen {
		return zipLocal{}, false
	}
	version, flags, method := b[4], le16(6), le16(8)
	csize32, usize32 := le32(18), le32(22)
	nlen, xlen := le16(26), le16(28)
	hlen := zipLocalLen + nlen + xlen
	switch {
	case hlen > maxZipHeader,
		version > 100,
		flags&0x0780 != 0, // bits 7-10 are unused
		method > 20 && (method < 93 || method > 99),
		nlen == 0,
		hlen > len(b),
		bytes.IndexByte(b[zipLocalLen:zipLocalLen+nlen], 0) >= 0:
		return zipLocal{}, false
	}
	h := zipLocal{hlen: hlen, method: method, csize: int64(csize32), desc: flags&0x8 != 0, name: b[zipLocalLen : zipLocalLen+nlen]}
	if csize32 == math.MaxUint32 || usize32 == math.MaxUint32 {
		z, ok := findExtra(b[zipLocalLen+nlen:hlen], zip64ExtraID)
		h.zip64 = ok
		if csize32 == math.MaxUint32 {
			// The local header's ZIP64 field holds both sizes,
			// uncompressed first; a writer that left out the
			// uncompressed one put the compressed one first.
			switch {
			case len(z) >= 16:
				h.csize = u64ToInt(binary.LittleEndian.Uint64(z[8:]))
			case len(z) >= 8 && usize32 != math.MaxUint32:
				h.csize = u64ToInt(binary.LittleEndian.Uint64(z))
			default:
				h.csize = zipUnknownLen
			}
		}
	}
	if h.desc && h.csize == 0 {
		h.csize = zipUnknownLen // streamed: the sizes follow the data
	}
	return h, true
}

// findExtra returns the data of the extra field with the given ID.
func findExtra(x []byte, id uint16) ([]byte, bool) {
	for n := 0; n < zipMaxExtras && len(x) >= 4; n++ {
		tag, size := binary.LittleEndian.Uint16(x), int(binary.LittleEndian.Uint16(x[2:]))
		if 4+size > len(x) {
			return nil, false
		}
		if tag == id {
			return x[4 : 4+size], true
		}
		x = x[4+size:]
	}
	return nil, false
}

func u64ToInt(v uint64) int64 {
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}

// addClamp adds two non-negative offsets without overflow.
func addClamp(a, b int64) int64 {
	if b > math.MaxInt64-a {
		return math.MaxInt64
	}
	return a + b
}

// tarMember pushes the frames of the tar member whose header group starts
// view: its data (with padding), then its headers on top. It reports false
// if view does not start with a valid header: the end-of-archive blocks,
// damage, or a group too long to see whole.
func (a *ArchiveChunker) tarMember(f *frame, view []byte) bool {
	if a.members >= maxArchiveMembers {
		return false
	}
	g, ok := parseTarGroup(view)
	if !ok {
		return false
	}
	a.members++
	level, limit, name := f.level, f.end, memberName(f.prefix, g.name)
	hdrEnd := a.pos + int64(g.hlen)
	if end := min(addClamp(hdrEnd, g.dataLen), limit); end > hdrEnd {
		a.push(frame{kind: frameBlob, level: level, start: hdrEnd, end: end, info: ChunkInfo{Kind: ChunkData, Member: a.members, Name: name}, checkEnd: true})
	}
	a.push(frame{kind: frameUnit, level: level, start: a.pos, end: hdrEnd, info: ChunkInfo{Kind: ChunkHeader, Member: a.members, Name: name}})
	return true
}

const tarBlock = 512

// tarMagic starts both magics tarHeader accepts, at tarMagicOff in a block.
var tarMagic = []byte("ustar")

const tarMagicOff = 257

// zeroBlock is the end-of-archive marker, twice.
var zeroBlock [tarBlock]byte

// tarGroup is one tar member's header blocks.
type tarGroup struct {
	hlen    int   // header blocks, with pax and long-name data, in bytes
	dataLen int64 // the member's data, padded to whole blocks
	name    []byte
}

// tarHeader checks the header block at the start of b: ustar or GNU magic
// and a matching checksum. It returns the type flag and the size field.
func tarHeader(b []byte) (typ byte, size int64, ok bool) {
	if len(b) < tarBlock {
		return 0, 0, false
	}
	h := b[:tarBlock]
	if string(h[257:263]) != "ustar\x00" && string(h[257:265]) != "ustar  \x00" {
		return 0, 0, false
	}
	chk, ok := parseOctal(h[148:156])
	if !ok {
		return 0, 0, false
	}
	// The checksum is the sum of the block's bytes with the checksum
	// field taken as spaces; some old writers summed signed bytes.
	var unsigned, signed int64
	for i, c := range h {
		if i >= 148 && i < 156 {
			c = ' '
		}
		unsigned += int64(c)
		signed += int64(int8(c))
	}
	if chk != unsigned && chk != signed {
		return 0, 0, false
	}
	if h[124]&0x80 != 0 {
		// Base-256, GNU's encoding of sizes beyond 8 GiB; negative is
		// invalid.
		if h[124] != 0x80 {
			return 0, 0, false
		}
		for _, c := range h[125:136] {
			if size > math.MaxInt64>>8 {
				return 0, 0, false
			}
			size = size<<8 | int64(c)
		}
	} else if size, ok = parseOctal(h[124:136]); !ok {
		return 0, 0, false
	}
	return h[156], size, true
}

// resyncTarHeader reports whether b starts with a header block the walker
// may resume at when it finds one away from where a walk expects it: one
// tarHeader accepts, of a type POSIX or GNU defines, with a name, a mode and
// a time. The checksum alone all but rules out chance; the fields rule out
// blocks made to look like headers by accident of editing.
func resyncTarHeader(b []byte) bool {
	typ, _, ok := tarHeader(b)
	if !ok || b[0] == 0 {
		return false
	}
	switch {
	case typ == 0, '0' <= typ && typ <= '7', typ == 'x', typ == 'g', 'A' <= typ && typ <= 'Z':
	default:
		return false
	}
	if _, ok := parseOctal(b[100:108]); !ok {
		return false
	}
	if b[136]&0x80 == 0 {
		if _, ok := parseOctal(b[136:148]); !ok {
			return false
		}
	}
	return true
}

// parseOctal parses a tar numeric field: octal digits, padded with spaces
// or NULs on either side.
func parseOctal(b []byte) (int64, bool) {
	b = bytes.Trim(b, " \x00")
	var v int64
	for _, c := range b {
		if c < '0' || c > '7' || v > math.MaxInt64>>3 {
			return 0, false
		}
		v = v<<3 | int64(c-'0')
	}
	return v, true
}

// parseTarGroup parses one member's header blocks at the start of b: pax
// ('x', 'g') and GNU long-name ('L', 'K') headers with their data, then the
// member's own header and, for GNU sparse files, its extension blocks.
// Metadata headers followed by no member header are a group of their own.
func parseTarGroup(b []byte) (tarGroup, bool) {
	var g tarGroup
	var name []byte
	off := 0
	for {
		typ, size, ok := tarHeader(b[off:])
		if !ok {
			if off == 0 {
				return g, false
			}
			g.hlen, g.name = off, name
			return g, true
		}
		h := b[off : off+tarBlock]
		switch typ {
		case 'x', 'g', 'L', 'K':
			next := int64(off) + tarBlock + padBlock(size)
			if size > maxTarGroup || next > maxTarGroup || next > int64(len(b)) {
				if off > 0 {
					g.hlen, g.name = off, name
					return g, true
				}
				// Metadata too long to look past: its data is
				// the member's data, as far as cutting goes.
				g.hlen, g.dataLen = tarBlock, padBlock(size)
				return g, true
			}
			body := b[off+tarBlock : off+tarBlock+int(size)]
			switch typ {
			case 'L':
				name, _, _ = bytes.Cut(body, []byte{0})
			case 'x':
				if p := paxPath(body); p != nil {
					name = p
				}
			}
			off = int(next)
			continue
		}
		end := off + tarBlock
		if typ == 'S' && h[482] != 0 {
			// GNU sparse: extension blocks follow while their last
			// byte but eight says so.
			for ext := true; ext && end+tarBlock <= len(b) && end+tarBlock <= maxTarGroup; end += tarBlock {
				ext = b[end+504] != 0
			}
		}
		g.hlen = end
		if typ < '1' || typ > '6' { // links, devices, dirs and FIFOs have no data
			g.dataLen = padBlock(size)
		}
		if name == nil {
			name = cString(h[0:100])
			if string(h[257:263]) == "ustar\x00" {
				if prefix := cString(h[345:500]); len(prefix) > 0 {
					name = append(append(append([]byte(nil), prefix...), '/'), name...)
				}
			}
		}
		g.name = name
		return g, true
	}
}

// padBlock rounds a size up to whole tar blocks.
func padBlock(n int64) int64 {
	if n > math.MaxInt64-tarBlock {
		return math.MaxInt64 &^ (tarBlock - 1)
	}
	return (n + tarBlock - 1) &^ (tarBlock - 1)
}

func cString(b []byte) []byte {
	s, _, _ := bytes.Cut(b, []byte{0})
	return s
}

// paxPath returns the value of the path record in pax data, or nil.
// Records are "LEN key=value\n", LEN counting the whole record.
func paxPath(b []byte) []byte {
	for len(b) > 0 {
		sp := bytes.IndexByte(b, ' ')
		if sp <= 0 || sp > 20 {
			return nil
		}
		n := 0
		for _, c := range b[:sp] {
			if c < '0' || c > '9' {
				return nil
			}
			n = n*10 + int(c-'0')
		}
		if n <= sp+1 || n > len(b) || b[n-1] != '\n' {
			return nil
		}
		if k, v, ok := bytes.Cut(b[sp+1:n-1], []byte("=")); ok && string(k) == "path" {
			return v
		}
		b = b[n:]
	}
	return nil
}
