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

	// Sign in as the admin; the overview says healthy.
	step("sign in", time.Minute,
		chromedp.WaitVisible(css("#token")),
		chromedp.SendKeys(css("#token"), c.Token),
		chromedp.Click(css(`#signin-form button[type="submit"]`)),
		chromedp.WaitVisible(css("#overview")),
		chromedp.WaitVisible(css("#health.healthy")))
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
	step("grow", 30*time.Second,
		chromedp.SendKeys(css(`[data-resize-size="web2"]`), "128MiB"),
		chromedp.Click(css(`[data-resize="web2"]`)))
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
	step("the volume's figures", 30*time.Second, chromedp.WaitVisible(css(`[data-stats="demo"] svg`)))

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
	hidden, err := chromedp.Run(rctx, chromedp.Evaluate[bool](`document.querySelector("#create-form").hidden`))
	if err != nil || !hidden {
		t.Errorf("a reader sees the create form (%v)", err)
	}
}
