//go:build race

package manifest

// raceEnabled lets the heaviest tests shrink their data under the race
// detector, which slows byte loops about tenfold.
const raceEnabled = true
