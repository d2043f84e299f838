package test

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	cdppage "github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/chunkraid/chunkraid/internal/scrape"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// dashboardShots is where TestDashboard saves a screenshot of each page.
const dashboardShots = "output/dashboard"

// TestDashboard drives the dashboard in Debian's Chromium (headless, with
// chromedp) against a running cluster: an admin signs in and sees the
// volume healthy; a chunkserver is killed and the page shows its member
// degraded, then in sync again once it is back, without a reload; the
// create form shows the CLI's message for a bad size and creates a volume
// from a good one, which the page then grows (after a refused shrink) and
// deletes; a reader signs in and gets no form; the token is never
// in the URL. Each page is saved as a screenshot under output/dashboard.
func TestDashboard(t *testing.T) {
	t.Parallel()
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium (make test-deps installs it): %v", err)
	}
	if err := os.MkdirAll(dashboardShots, 0o755); err != nil {
		t.Fatal(err)
	}
	c := faultCluster(t)
	ctx := t.Context()
	v := createVolume(t, c, "demo", "64MiB", c.HostName)
	if err := c.WaitTarget(ctx, "demo", time.Minute); err != nil {
		t.Fatal(err)
	}
	url := c.ISCSIURL("demo")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", "-c", "flush", url)
	reader, err := c.Client().CreateToken(ctx, api.CreateTokenRequest{Name: "viewer", Role: api.RoleReader})
	if err != nil {
		t.Fatal(err)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.NoSandbox,
		// The cluster's CA is its own: the browser is told not to check it.
		chromedp.Flag("ignore-certificate-errors", true), chromedp.WindowSize(1280, 1000))
	actx, cancel := chromedp.NewExecAllocator(ctx, opts...)
	defer cancel()
	browser, cancel := chromedp.NewContext(actx)
	defer cancel()
	// The first action starts the browser, with no deadline of its own.
	if err := chromedp.Do(browser, chromedp.Navigate(c.MetaURL+"/")); err != nil {
		t.Fatalf("opening the dashboard: %v", err)
	}
	step := func(what string, d time.Duration, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, cancel := context.WithTimeout(browser, d)
		defer cancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			// What the page says, for the failure.
			dctx, dcancel := context.WithTimeout(browser, 10*time.Second)
			body, _ := chromedp.Run(dctx, chromedp.Evaluate[string](`document.body.innerText`))
			dcancel()
			t.Fatalf("%s: %v\nthe page:\n%s", what, err, body)
		}
	}
	get := func(what string, a chromedp.Action[string]) string {
		t.Helper()
		sctx, cancel := context.WithTimeout(browser, 30*time.Second)
		defer cancel()
		v, err := chromedp.Run(sctx, a)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return v
	}
	shot := func(name string) {
		t.Helper()
		sctx, cancel := context.WithTimeout(browser, 30*time.Second)
		defer cancel()
		png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100)) // 100: PNG, below: JPEG
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		p := filepath.Join(dashboardShots, name+".png")
		if err := os.WriteFile(p, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot %s (%d bytes)", p, len(png))
	}
	css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }
	page := func(name string) chromedp.Action[chromedp.Void] {
		return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := chromedp.Evaluate[string](`location.hash = "#`+name+`"`)(ctx, tg)
			return err
		})
	}

	// Sign in as the admin with the keyboard alone: Tab to the token,
	// type it, Enter; the overview says healthy. (The tab is brought to
	// the front, as the window a person types in is.)
	kctx, kcancel := context.WithTimeout(browser, time.Minute)
	defer kcancel()
	err = chromedp.Do(kctx,
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			if _, err := cdp.Call(ctx, tg, cdppage.BringToFront, cdp.Empty{}); err != nil {
				return err
			}
			_, err := cdp.Call(ctx, tg, emulation.SetFocusEmulationEnabled, emulation.SetFocusEmulationEnabledParams{Enabled: true})
			return err
		}),
		chromedp.WaitVisible(css("#token")),
		chromedp.KeyEvent("\t"))
	if err != nil {
		t.Fatalf("keyboard sign-in: %v", err)
	}
	if id, err := chromedp.Run(kctx, chromedp.Evaluate[string](`document.activeElement.id || document.activeElement.tagName + " hasFocus=" + document.hasFocus()`)); err != nil || id != "token" {
		t.Fatalf("the first Tab stop is %q (%v), want the token field", id, err)
	}
	err = chromedp.Do(kctx,
		chromedp.KeyEvent(c.Token),
		chromedp.KeyEvent("\r"),
		chromedp.WaitVisible(css("#overview")),
		chromedp.WaitVisible(css("#health.healthy")))
	if err != nil {
		t.Fatalf("keyboard sign-in: %v", err)
	}
	if id, err := chromedp.Run(kctx, chromedp.Evaluate[string](`document.activeElement.id`)); err != nil || id != "overview-title" {
		t.Errorf("after the sign-in the focus is on %q (%v), want the overview's heading", id, err)
	}
	// Tab to the Events link, every stop on the way showing where the
	// focus is, and Enter: the events page, with the focus on its heading.
	type stop struct{ Tag, Text, Outline string }
	var stops []string
	for range 20 {
		if err := chromedp.Do(kctx, chromedp.KeyEvent("\t")); err != nil {
			t.Fatal(err)
		}
		st, err := chromedp.Run(kctx, chromedp.Evaluate[stop](`({Tag: document.activeElement.tagName, Text: (document.activeElement.innerText || document.activeElement.id || document.activeElement.tagName).trim(), Outline: getComputedStyle(document.activeElement).outlineStyle})`))
		if err != nil {
			t.Fatal(err)
		}
		if st.Tag == "BODY" {
			// Past the page's last control: the browser's own stop.
			stops = append(stops, "(the browser)")
			continue
		}
		stops = append(stops, st.Text)
		if st.Outline == "none" {
			t.Errorf("Tab stop %q shows no focus outline", st.Text)
		}
		if st.Text == "Events" {
			break
		}
	}
	if stops[len(stops)-1] != "Events" {
		t.Fatalf("Tab never reached the Events link: %q", stops)
	}
	err = chromedp.Do(kctx, chromedp.KeyEvent("\r"), chromedp.WaitVisible(css("#event-list table")))
	if err != nil {
		t.Fatalf("Enter on the Events link: %v", err)
	}
	if id, err := chromedp.Run(kctx, chromedp.Evaluate[string](`document.activeElement.id`)); err != nil || id != "events-title" {
		t.Errorf("after Enter on Events the focus is on %q (%v), want the page's heading", id, err)
	}
	t.Logf("an admin signed in and reached the events page with the keyboard alone, Tab stops %q", stops)
	step("the overview", 30*time.Second, page("overview"), chromedp.WaitVisible(css("#health.healthy")))
	t.Logf("overview: %s", get("health", chromedp.Text(css("#health"))))
	if href := get("location", chromedp.Location()); strings.Contains(href, c.Token) || strings.Contains(href, "token") {
		t.Errorf("the token is in the URL: %s", href)
	}
	shot("overview")
	step("the demo volume healthy", 30*time.Second, page("volumes"),
		chromedp.WaitVisible(css(`[data-volume-health="demo"][data-health="healthy"]`)))
	shot("volumes")
	step("servers", 30*time.Second, page("servers"), chromedp.WaitVisible(css(`tr[data-server="cs1"][data-state="online"]`)))
	shot("servers")

	// An idle page waits in a long poll: it reads the volumes again only
	// every few seconds (for progress and figures), not in a tight loop.
	reads := func() float64 {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.MetaURL+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer "+c.Token)
		resp, err := caClient(t, c).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		m, err := scrape.Parse(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := m.Sum("chunkraid_metaserver_api_requests_total", map[string]string{"method": "GET", "route": "/api/v1/volumes"})
		return n
	}
	before := reads()
	time.Sleep(6 * time.Second)
	if n := reads() - before; n > 2 {
		t.Errorf("an idle page read the volumes %v times in 6 s", n)
	} else {
		t.Logf("an idle page read the volumes %v times in 6 s", n)
	}

	// Kill the chunkserver of member 1: the page shows the member
	// degraded, then in sync again after its return, without a reload.
	victim := v.Sets[0].Members[1].Chunkserver
	member := `tr[data-volume="demo"][data-set="0"][data-member="1"]`
	step("volumes page", 10*time.Second, page("volumes"))
	killed := time.Now()
	if err := c.CS[csIndex(t, c, victim)].Kill(); err != nil {
		t.Fatal(err)
	}
	step("the member degraded", time.Minute, chromedp.WaitVisible(css(member+`[data-state="degraded"]`)))
	t.Logf("the page showed member 1 of set 0 degraded %v after its chunkserver %s was killed (an idle volume: the host's probe notices)",
		time.Since(killed).Round(100*time.Millisecond), victim)
	step("the volume degraded", 10*time.Second, chromedp.WaitVisible(css(`[data-volume-health="demo"][data-health="degraded"]`)))
	shot("volumes-degraded")
	if err := c.CS[csIndex(t, c, victim)].Start(); err != nil {
		t.Fatal(err)
	}
	step("the member in sync again", 2*time.Minute, chromedp.WaitVisible(css(member+`[data-state="in_sync"]`)),
		chromedp.WaitVisible(css(`[data-volume-health="demo"][data-health="healthy"]`)))
	t.Logf("and in sync again %v after the kill", time.Since(killed).Round(100*time.Millisecond))
	shot("volumes-resynced")
	sctx, scancel := context.WithTimeout(browser, 10*time.Second)
	navs, err := chromedp.Run(sctx, chromedp.Evaluate[int](`performance.getEntriesByType("navigation").length`))
	scancel()
	if err != nil || navs != 1 {
		t.Errorf("%d navigations (%v): the page reloaded", navs, err)
	}

	// Load on demo while the forms are used, for its figures: the page
	// draws IOPS and p99 latency from the host's reports.
	loadCtx, stopLoad := context.WithCancel(ctx)
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		for loadCtx.Err() == nil {
			_ = exec.CommandContext(loadCtx, "qemu-io", "-f", "raw", "-c", "write -P 0x33 2M 256k", "-c", "read 0 256k", "-c", "flush", url).Run()
		}
	}()
	defer func() { stopLoad(); <-loadDone }()

	// The create form: the CLI's message for a bad size, then a volume.
	step("a bad size", 30*time.Second,
		chromedp.SetValue(css("#c-name"), "web2"),
		chromedp.SetValue(css("#c-size"), "12XB"),
		chromedp.Click(css(`#create-form button[type="submit"]`)),
		chromedp.WaitVisible(css(`#create-error:not(:empty)`)))
	if bad := get("create error", chromedp.Text(css("#create-error"))); !strings.Contains(bad, `invalid size "12XB": use a whole number of bytes or a number with a unit such as 64MiB, 20GiB`) {
		t.Errorf("bad size: %q", bad)
	}
	shot("create-bad-size")
	step("create", 30*time.Second,
		chromedp.SetValue(css("#c-size"), "64MiB"),
		chromedp.SetValue(css("#c-host"), c.HostName),
		chromedp.Click(css(`#create-form button[type="submit"]`)),
		chromedp.WaitVisible(css(`#create-ok:not(:empty)`)),
		chromedp.WaitVisible(css(`[data-volume-health="web2"]`)))
	t.Logf("create: %s", get("create ok", chromedp.Text(css("#create-ok"))))
	if _, err := c.Client().GetVolume(ctx, "web2"); err != nil {
		t.Errorf("the volume the form created: %v", err)
	}
	// Resize and delete from the page, through the API: a shrink gets the
	// API's message, kept on the page; a grow and a delete take effect.
	step("shrink refused", 30*time.Second,
		// Typed, as a person does: a focused field is not redrawn.
		chromedp.SendKeys(css(`[data-resize-size="web2"]`), "32MiB"),
		chromedp.Click(css(`[data-resize="web2"]`)))
	var shrinkMsg string
	waitFor(t, 30*time.Second, "the page to say why the shrink was refused", func() bool {
		ectx, cancel := context.WithTimeout(browser, 5*time.Second)
		defer cancel()
		shrinkMsg, _ = chromedp.Run(ectx, chromedp.Evaluate[string](`(document.querySelector('[data-action-error="web2"]') || {}).textContent || ""`))
		return shrinkMsg != ""
	})
	if !strings.Contains(shrinkMsg, "shrinking is not supported") {
		t.Errorf("shrink from the page: %q", shrinkMsg)
	}
	// The page redraws the volume's row after the refusal: fill the field
	// and click its button in one step, so that both are of the same row.
	step("grow", 30*time.Second, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := chromedp.Evaluate[bool](`(() => {
			document.querySelector('[data-resize-size="web2"]').value = '128MiB';
			document.querySelector('[data-resize="web2"]').click();
			return true;
		})()`)(ctx, tg)
		return err
	}))
	waitFor(t, 30*time.Second, "web2 grown to 128 MiB", func() bool {
		w, err := c.Client().GetVolume(ctx, "web2")
		return err == nil && w.SizeBytes == 128<<20
	})
	shot("volumes-actions")
	step("delete", 30*time.Second,
		page("volumes"),
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := chromedp.Evaluate[bool](`(window.confirm = () => true, true)`)(ctx, tg)
			return err
		}),
		chromedp.Click(css(`[data-delete="web2"]`)),
		chromedp.WaitNotPresent(css(`[data-volume-health="web2"]`)))
	if _, err := c.Client().GetVolume(ctx, "web2"); !api.IsNotFound(err) {
		t.Errorf("web2 after the delete from the page: %v", err)
	}
	// A volume's I/O limits show on the page once set.
	if _, err := c.Client().SetVolumeQoS(ctx, "demo", api.QoS{WriteIOPS: api.Limit{Rate: 1000000}, ReadBPS: api.Limit{Rate: 1 << 30}}); err != nil {
		t.Fatal(err)
	}
	step("the volume's I/O limits", 30*time.Second, page("volumes"),
		chromedp.WaitVisible(css(`[data-qos="demo"]`)),
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := chromedp.Poll[bool](`document.querySelector('[data-qos="demo"]').textContent.includes('write IOPS 1000000 (burst 1000000), read bytes/s 1 GiB (burst 1 GiB)')`)(ctx, tg)
			return err
		}))
	t.Logf("demo's limits: %s", get("limits", chromedp.Text(css(`[data-qos="demo"]`))))
	// Its snapshots too, with where one is served.
	if _, err := c.Client().CreateSnapshot(ctx, "demo", "nightly"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client().AttachSnapshot(ctx, "demo", "nightly", c.HostName); err != nil {
		t.Fatal(err)
	}
	step("the volume's snapshots", 30*time.Second, page("volumes"),
		chromedp.WaitVisible(css(`[data-snapshots="demo"][data-count="1"]`)),
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := chromedp.Poll[bool](`document.querySelector('[data-snapshots="demo"]').textContent.includes('nightly (ready, ') &&
				document.querySelector('[data-snapshots="demo"]').textContent.includes('served read-only by `+c.HostName+` as `+api.SnapshotIQN("demo", "nightly")+`')`)(ctx, tg)
			return err
		}))
	t.Logf("demo's snapshots: %s", get("snapshots", chromedp.Text(css(`[data-snapshots="demo"]`))))
	// A clone of it says what it is a clone of.
	if _, err := c.Client().CloneVolume(ctx, "demo", "nightly", "demo-clone", ""); err != nil {
		t.Fatal(err)
	}
	step("a clone", 30*time.Second, page("volumes"),
		chromedp.WaitVisible(css(`[data-clone-of="demo-clone"]`)),
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := chromedp.Poll[bool](`document.querySelector('[data-clone-of="demo-clone"]').textContent.includes('Writable clone of demo@nightly')`)(ctx, tg)
			return err
		}))
	step("the volume's figures", time.Minute, page("volumes"),
		chromedp.WaitVisible(css(`[data-stats="demo"] svg[aria-label^="IOPS of demo"]`)),
		chromedp.WaitVisible(css(`[data-stats="demo"] svg[aria-label^="p99 latency of demo"]`)),
		// The latest report, made under the load, has figures.
		chromedp.WaitVisible(css(`[data-stats="demo"]:not([data-iops="0"]):not([data-p99-us="0"]):not([data-points="1"])`)))
	stopLoad()
	<-loadDone
	t.Logf("demo's figures under load: %s", get("figures", chromedp.Text(css(`[data-stats="demo"]`))))
	shot("volumes-figures")

	// The events of one cause are one line, with each event a click away:
	// demo and web2 attached to the same host.
	group := `[data-event-group="volume_attached ` + c.HostName + `"][data-count="2"]`
	step("events", 30*time.Second, page("events"), chromedp.WaitVisible(css(`#event-list table`)),
		chromedp.WaitVisible(css(group+" details summary")))
	if line := get("event group", chromedp.Text(css(group+" summary"))); !strings.Contains(line, c.HostName+": 2 volumes attached") {
		t.Errorf("the grouped events: %q", line)
	}
	shot("events")

	// A reader: a new tab (its own sessionStorage) gets no form.
	tab, cancel := chromedp.NewContext(browser)
	defer cancel()
	if err := chromedp.Do(tab, chromedp.Navigate(c.MetaURL+"/#volumes")); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(tab, time.Minute)
	defer rcancel()
	err = chromedp.Do(rctx,
		chromedp.WaitVisible(css("#token")),
		chromedp.SendKeys(css("#token"), reader.Secret),
		chromedp.Click(css(`#signin-form button[type="submit"]`)),
		chromedp.WaitVisible(css(`[data-volume-health="demo"]`)))
	if err != nil {
		t.Fatalf("reader: %v", err)
	}
	hidden, err := chromedp.Run(rctx, chromedp.Evaluate[bool](`document.querySelector("#create-form").hidden && !document.querySelector("[data-delete]")`))
	if err != nil || !hidden {
		t.Errorf("a reader sees the create form or a delete button (%v)", err)
	}
}
