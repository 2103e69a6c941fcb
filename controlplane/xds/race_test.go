//go:build race

package xds_test

// raceEnabled: the race detector slows grpc-go several times over; the
// differential test then sends a sample of its requests.
const raceEnabled = true
