package iscsi

import (
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestChurnUnderIO runs, all at once and with bounded counts: sessions doing
// I/O on a target whose allowlist and CHAP settings keep changing, logins
// and logouts on that target, and other targets added, used and removed.
// The I/O sessions must go on undisturbed (UpdateTarget applies to new
// logins only), and every session and TSIH must be gone at the end. Run
// with -race.
func TestChurnUnderIO(t *testing.T) {
	srv, _, addr := newTestServer(t, Config{}, 4<<20)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var done [3]atomic.Int64
	ioClients := make([]*testInitiator, len(done))
	for i := range ioClients {
		c := dialInitiator(t, addr)
		c.loginNormal()
		ioClients[i] = c
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				cdb := cdbWrite10(uint32(i*512+n%64*8), 8, false)
				if n%2 == 1 {
					cdb = cdbRead10(uint32(i*512+n%64*8), 8)
				}
				var out []byte
				if n%2 == 0 {
					out = buf
				}
				if r := c.command(cdb, 4096, out, 4096); r.status != statusGood {
					t.Errorf("I/O session %d: status %#x", i, r.status)
					return
				}
				done[i].Add(1)
			}
		}()
	}

	var churn sync.WaitGroup
	churn.Add(3)
	go func() { // the target's settings change under the I/O
		defer churn.Done()
		creds := testCHAP
		for n := range 200 {
			cfg := TargetConfig{}
			switch n % 3 {
			case 1:
				cfg.AllowedInitiators = []string{"iqn.2026-01.test:nobody"}
			case 2:
				cfg.CHAP = &creds
			}
			if err := srv.UpdateTarget(testIQN, cfg); err != nil {
				t.Error(err)
				return
			}
		}
		if err := srv.UpdateTarget(testIQN, TargetConfig{}); err != nil {
			t.Error(err)
		}
	}()
	go func() { // logins and logouts; some are refused while the settings churn
		defer churn.Done()
		for range 40 {
			c := dialInitiator(t, addr)
			resp, _ := c.login(textPair{"InitiatorName", "iqn.2026-01.test:churn"}, textPair{"TargetName", testIQN},
				textPair{"SessionType", "Normal"})
			status := uint16(resp.StatusClass)<<8 | uint16(resp.StatusDetail)
			switch status {
			case 0:
				c.logout()
			case loginAuthFailed, loginAuthzFailed:
				if err := c.waitClosed(5 * time.Second); err != nil {
					t.Error(err)
				}
			default:
				t.Errorf("login during churn: status 0x%04x", status)
			}
		}
	}()
	go func() { // targets come and go with I/O on them
		defer churn.Done()
		for n := range 5 {
			iqn := "iqn.2026-11.io.chunkraid:churn-" + strconv.Itoa(n)
			if err := srv.AddTarget(iqn, newMemBackend(1<<20), "churn"+strconv.Itoa(n)); err != nil {
				t.Error(err)
				return
			}
			stopIO := make(chan struct{})
			var io sync.WaitGroup
			for k := range 2 {
				io.Add(1)
				go func() {
					defer io.Done()
					ioLoop(t, addr, iqn, 100+10*n+k, stopIO)
				}()
			}
			time.Sleep(30 * time.Millisecond)
			if err := srv.RemoveTarget(iqn); err != nil {
				t.Error(err)
			}
			close(stopIO)
			io.Wait()
		}
	}()
	churn.Wait()

	before := make([]int64, len(done))
	for i := range done {
		before[i] = done[i].Load()
	}
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()
	for i := range done {
		if before[i] == 0 || done[i].Load() == before[i] {
			t.Errorf("I/O session %d: %d commands during the churn, %d after: it stalled", i, before[i], done[i].Load()-before[i])
		}
	}
	for _, c := range ioClients {
		c.logout()
	}
	deadline := time.Now().Add(5 * time.Second)
	for srv.sessionCount() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := srv.sessionCount(); n != 0 {
		t.Errorf("%d sessions left after the churn", n)
	}
	if got := srv.Targets(); len(got) != 1 || got[0] != testIQN {
		t.Errorf("targets after the churn: %v", got)
	}
}

// TestSessionReleasedOnConnectionLoss drops connections without logging
// out, some with a command stuck in the back end: every session and its
// TSIH must be released, and the stuck commands cancelled.
func TestSessionReleasedOnConnectionLoss(t *testing.T) {
	srv, be, addr := newTestServer(t, Config{}, 1<<20)
	be.delay.Store(int64(10 * time.Second))
	for i := range 10 {
		c := dialInitiator(t, addr)
		c.loginNormal()
		if i%2 == 0 {
			c.sendCommand(c.nextITT(), cdbRead10(0, 1), 512, nil, 0, true)
		}
		c.nc.Close()
	}
	start := time.Now()
	deadline := start.Add(5 * time.Second)
	for srv.sessionCount() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := srv.sessionCount(); n != 0 {
		t.Fatalf("%d sessions left %v after their connections closed", n, time.Since(start))
	}
	srv.mu.Lock()
	tgt := srv.mu.targets[testIQN]
	left := len(tgt.sessions)
	srv.mu.Unlock()
	if left != 0 {
		t.Errorf("the target still lists %d sessions", left)
	}
}
