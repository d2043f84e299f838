// Package bench measures chunkraid against reference systems on the same
// machine, in one invocation, and reports ratios rather than absolute
// numbers: a figure taken on a busy or slow machine still compares like
// with like. `make bench` runs it through the program in bench/run.
//
// Pairs measured (ours against reference):
//
//	nbd     a chunkserver's NBD export of one chunk   vs nbdkit's file plugin on a
//	        (fio, nbd engine, 4K random, QD1/QD32)        file of the same size, same disk
//	mirror  a mirror:2 volume served by hostd         vs tgtd with a file LUN, same disk
//	        (qemu-img bench, 4K writes, QD1/QD32)
//	target  the hostd/iscsi target over memory        vs tgtd with a LUN file on tmpfs
//	        (bench/memtarget; qemu-img bench, QD32)
//	bitmap  a mirror:2 volume with bitmap remb        vs the same with bitmap none
//
// Every figure is the median of Config.Runs runs, and the runs alternate
// ours, reference, ours, reference, so that drift on the machine (page-cache
// state, other load) falls on both sides. Each run is bounded in time (fio
// --runtime) or in count (qemu-img bench -c, sized by a calibration run),
// and every command has a deadline.
//
// Performance is measured, never asserted: a missed target is a row of the
// report, not a failure. The report is a Markdown table written to the
// configured writer and to Config.ResultsDir/latest.md.
//
// With Config.Profile (`make bench-profile`), each pair is then run once
// more per side under its QD32 load to find where the time goes: CPU time
// per operation of every serving process (/proc/PID/stat), system calls and
// context switches per operation (perf stat), and perf profiles of both
// sides, written to ResultsDir/profile-NAME.txt. The daemons expose no
// pprof endpoint, so perf is the profiler; Go frame pointers give it call
// stacks.
//
// Everything runs on loopback. Every process started (the cluster, nbdkit,
// tgtd on its own portal and management port, memtarget) is stopped and
// every file removed when Run returns, also on error or Ctrl-C.
package bench
