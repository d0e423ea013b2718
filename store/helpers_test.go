package store

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"strings"
)

// These mirror storetest.Random and storetest.Text, which tests of this
// package cannot import (storetest imports store).

func random(seed uint64, n int) []byte {
	b := make([]byte, n)
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	rand.NewChaCha8(key).Read(b)
	return b
}

func text(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	words := []string{"func", "return", "err", "nil", "if", "ctx", "store", "chunk", "frame", "data", "{", "}", "(", ")", ":=", "\n\t", "\n"}
	var b strings.Builder
	for b.Len() < n {
		b.WriteString(words[r.IntN(len(words))])
		if r.IntN(4) == 0 {
			fmt.Fprintf(&b, "%d", r.IntN(1000))
		}
		b.WriteByte(' ')
	}
	return []byte(b.String()[:n])
}
