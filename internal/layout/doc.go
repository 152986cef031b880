// Package layout has no code of its own: its test keeps the import rules
// that ARCHITECTURE.md states (which room of the tree may import which), so
// a change that breaks one fails `go test ./...` rather than a review.
//
// It imports nothing.
package layout
