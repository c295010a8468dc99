"""App responsiveness (BENCHMARKS.md, "App responsiveness"): start-to-interactive and click-to-results of
`python app.py` with the default preset and forget set, driven through Debian's chromium.

    python bench/app_timing.py APP_DIR LABEL [TRIALS]      # e.g. python bench/app_timing.py . after 3

Prints one JSON line per trial: http_s (the server answers), interactive_s (the page shows the Run button
and the forget-set preview), run1_s / run1_cpu_s (Run clicked as soon as the page is interactive, until
"Done": wall seconds and the app process's CPU seconds), run2_s / run2_cpu_s (a second Run in the same
process). MEASURE_NO_RUN=1 stops after interactive_s. MEASURE_PRESET=NAME (e.g. vit-mnist) switches the
page to that preset once it is interactive and times one Run of its default forget set (run1_*; with an
empty MAPE_CACHE this is the first use: training the original through the app). MEASURE_LESSONS=KEY,KEY,...
(or "all") clicks each lesson at the top of the page once it is interactive and prints the seconds from the
click to its "done" (lesson_s; the lessons run with the retrained model on, so a first use trains the
originals and retrained models they need: run twice and read the second). Needs playwright and
/usr/bin/chromium; the original model should be in the cache (otherwise the first Run trains it)."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

from playwright.sync_api import sync_playwright

app_dir, label = sys.argv[1], sys.argv[2]
trials = int(sys.argv[3]) if len(sys.argv) > 3 else 1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(page):
    loc = page.locator("#run-status .mape-status")
    return loc.first.inner_text() if loc.count() else ""


def wait(fn, timeout, interval=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            v = fn()
            if v:
                return v
        except Exception:
            pass
        time.sleep(interval)
    raise TimeoutError


def cpu_s(pid):
    """user + system CPU seconds of a process (all its threads)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(page, pid):
    before = status(page)
    t, c = time.monotonic(), cpu_s(pid)
    page.click("#run-btn")
    s = wait(lambda: (lambda x: x if ("Done" in x or "error" in x) and x != before else None)(status(page)), 1500)
    return time.monotonic() - t, cpu_s(pid) - c, s


with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                      "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"])
    for k in range(trials):
        port = free_port()
        env = {**os.environ, "PORT": str(port), "MAPE_DATA_DIR": "/work/shared/data", "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        env.pop("MAPE_APP_PRESETS", None)
        log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"app-timing-{label}-{k}.log"), "w")
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=app_dir, env=env, stdout=log, stderr=log)
        try:
            wait(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).status == 200, 300)
            http_s = time.monotonic() - t0
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#run-btn", timeout=300_000)
            page.wait_for_selector("#forget-counts table", timeout=300_000)
            interactive_s = time.monotonic() - t0
            start_cpu = cpu_s(proc.pid)
            if os.environ.get("MEASURE_NO_RUN"):
                print(json.dumps({"label": label, "trial": k, "http_s": round(http_s, 1),
                                  "interactive_s": round(interactive_s, 1), "load": os.getloadavg()}), flush=True)
                continue
            wanted = os.environ.get("MEASURE_LESSONS")
            if wanted:
                sys.path.insert(0, os.path.abspath(app_dir))
                from mape.serving.lessons import LESSONS

                for lesson in (x for x in LESSONS if wanted == "all" or x.key in wanted.split(",")):
                    t, c = time.monotonic(), cpu_s(proc.pid)
                    page.click(f"#lesson-btn-{lesson.key}")
                    note = wait(lambda: (lambda x: x if f"“{lesson.title}” done" in x or "did not finish" in x
                                         else None)(page.inner_text("#lesson-status")), 1500)
                    print(json.dumps({"label": label, "trial": k, "interactive_s": round(interactive_s, 1),
                                      "lesson": lesson.key, "lesson_s": round(time.monotonic() - t, 1),
                                      "lesson_cpu_s": round(cpu_s(proc.pid) - c, 1), "status": note[:120],
                                      "load": os.getloadavg()}), flush=True)
                page.close()
                continue
            other = os.environ.get("MEASURE_PRESET")
            if other:
                sys.path.insert(0, os.path.abspath(app_dir))
                from mape.data.presets import PRESETS

                page.click("#preset input")
                page.get_by_role("option", name=PRESETS[other].title).click()
                time.sleep(0.5)  # the switch disables Run at once; run() clicks when it is enabled again
                run1_s, cpu1, s1 = run(page, proc.pid)
                print(json.dumps({"label": label, "trial": k, "preset": other, "run1_s": round(run1_s, 1),
                                  "run1_cpu_s": round(cpu1, 1), "status1": s1, "load": os.getloadavg()}), flush=True)
                page.close()
                continue
            run1_s, cpu1, s1 = run(page, proc.pid)
            run2_s, cpu2, s2 = run(page, proc.pid)
            print(json.dumps({"label": label, "trial": k, "http_s": round(http_s, 1),
                              "interactive_s": round(interactive_s, 1), "start_cpu_s": round(start_cpu, 1),
                              "run1_s": round(run1_s, 1), "run1_cpu_s": round(cpu1, 1),
                              "run2_s": round(run2_s, 1), "run2_cpu_s": round(cpu2, 1), "status1": s1, "status2": s2,
                              "load": os.getloadavg()}), flush=True)
            page.close()
        finally:
            proc.terminate()
            proc.wait(30)
    browser.close()
