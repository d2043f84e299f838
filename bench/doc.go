// Package bench measures chunkraid against reference systems on the same
// machine, in one invocation, and reports ratios rather than absolute
// numbers: a figure taken on a busy or slow machine still compares like
// with like. `make bench` runs it through the program in bench/run.
//
// Groups measured (ours against reference), in this order:
//
//	nbd     a chunkserver's NBD export of one chunk   vs nbdkit's file plugin on a file of the same size;
//	        fio, nbd engine: 4K random QD1/QD32 and 1 MiB sequential QD8, read and write:
//	        IOPS or MB/s, mean and p99 latency (fio's lat_ns percentiles)
//	volume  a volume of each layout (mirror:2,          vs tgtd with a file LUN on the same disk;
//	        mirror:3, ec:4+2) served by hostd           qemu-img bench 4K QD32 and 1 MiB QD8, read and
//	                                                    write; qemu-io 4K random QD1 for mean and p99
//	layout  ec:4+2 vs mirror:2 and vs mirror:3, from the volume group's runs: 1 MiB read and write,
//	        4K random write QD1
//	target  the hostd/iscsi target over memory        vs tgtd with a LUN file on tmpfs
//	        (bench/memtarget)
//	bitmap  mirror:2 volumes with bitmap remb and     vs the same with bitmap none; 4K QD32 IOPS,
//	        with bitmap internal                        4K random write QD1 mean and p99
//	resync  bytes copied and time to get back in sync after a chunkserver outage and after a host
//	        crash (kill -9 hostd, attach on a new host), for several sizes written meanwhile
//	rebuild a chunkserver lost for good (kill -9, not restarted until the rebuild is over), on a
//	        cluster of its own whose metaserver replaces it within seconds: bytes copied against
//	        what the survivor holds, the rebuild's time and rate, kill to all in sync; and the
//	        qemu-io 4K random write QD1 mean and p99 during the rebuild vs the same load before it
//
// QD1 latencies through iSCSI come from qemu-io: one command per request on
// its standard input, each reported with its rate (to four decimals, from
// the exact elapsed time), whose inverse is the request's latency.
//
// Every figure is the median of Config.Runs runs (5 of 2 s by default),
// reported with its spread, the lowest and the highest ratio of one round;
// the 4K QD32 rows also give the CPU time (user and system, from
// /proc/PID/stat) that each side's serving processes spent per request:
// a figure that noise on a shared machine disturbs far less than IOPS. The
// runs alternate
// between the sides (ours, reference, ours, reference; or reference and the
// three layouts; or the three bitmap modes), so that drift on the machine
// (page-cache state, other load) falls on all of them. Each run is bounded in
// time (fio --runtime) or in count (qemu-img bench -c, sized by a
// calibration run; a fixed number of qemu-io commands), and every command
// has a deadline.
//
// Performance is measured, never asserted: a missed target is a row of the
// report, not a failure. The report is a Markdown table written to the
// configured writer and to Config.ResultsDir/latest.md, and the same figures
// with their per-run values as JSON in latest.json.
//
// With Config.Profile (`make bench-profile`), each pair is then run once
// more per side under its QD32 load to find where the time goes: CPU time
// per operation of every serving process (/proc/PID/stat), system calls and
// context switches per operation (perf stat), and perf profiles of both
// sides, written to ResultsDir/profile-NAME.txt. The daemons expose no
// pprof endpoint, so perf is the profiler; Go frame pointers give it call
// stacks.
//
// Everything runs on loopback. Every process started (the clusters, nbdkit,
// tgtd on its own portal and management port, memtarget) is stopped and
// every file removed when Run returns, also on error or Ctrl-C.
package bench
