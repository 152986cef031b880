//go:build race

package udpbind

const raceEnabled = true
