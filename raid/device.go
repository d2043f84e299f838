// Package raid assembles member devices into redundant sets: mirrors of
// 2–3 copies today, Reed-Solomon k+m later. A Set is itself a Device, so
// linear volumes and tests can treat a set and a single member alike.
package raid

import (
	"context"
	"errors"
)

// Device is what a set consumes from each member: a fixed-size byte-addressed
// block device. The chunk client (NBD) satisfies it over the network; memdev
// satisfies it in memory for tests.
//
// Contract:
//   - offsets and lengths are in bytes; off+len(p) must not exceed Size(),
//     otherwise ErrOutOfRange is returned and nothing is transferred;
//   - ReadAt fills all of p or returns an error; a short read is an error;
//   - WriteAt returns nil only once the device has accepted all of p; with
//     fua the bytes are durable when it returns;
//   - Flush makes every write acknowledged before the call durable; an error
//     means durability of earlier writes is unknown and the device has failed;
//   - Trim deallocates a range; later reads of it return zeroes;
//   - all methods are safe for concurrent use and honour ctx cancellation.
type Device interface {
	ReadAt(ctx context.Context, p []byte, off int64) error
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	Flush(ctx context.Context) error
	Trim(ctx context.Context, off, length int64) error
	Size() int64
}

// ErrOutOfRange is returned for I/O beyond the end of a device.
var ErrOutOfRange = errors.New("raid: I/O beyond end of device")

// ErrNoMembers is returned when a set has no usable member left for an I/O.
var ErrNoMembers = errors.New("raid: no usable member")
