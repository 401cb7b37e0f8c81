"""Drive examples/workbench.ipynb in a real browser (Chromium via selenium + chromedriver) on a running JupyterLab:
run the notebook, then config → check → cache → train (a few steps) → sample, asserting the rendered widgets and
saving a screenshot after each step. Started by `scripts/browser_test.sh`; exits non-zero on any failure."""
import argparse, sys, time, urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys


def wait(what, fn, timeout=120, every=0.5):
    "Poll `fn` until it returns something truthy; fail naming `what` after `timeout` seconds."
    t0, last = time.time(), None
    while time.time() - t0 < timeout:
        try:
            v = fn()
            if v: return v
        except Exception as e: last = e   # the page is still changing under us
        time.sleep(every)
    raise TimeoutError(f"{what}: not seen within {timeout} s" + (f" (last error: {last})" if last else ""))


class Lab:
    def __init__(self, url, out: Path, chromium, chromedriver):
        self.out, self.shots = out, 0
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"): opts.add_argument(a)
        self.d = webdriver.Chrome(service=Service(chromedriver), options=opts)
        self.d.get(url)

    def shot(self, name):
        self.shots += 1
        path = self.out / f"{self.shots:02d}_{name}.png"
        self.d.save_screenshot(str(path))
        print(f"screenshot: {path}", flush=True)

    def visible(self, xpath):
        return [e for e in self.d.find_elements(By.XPATH, xpath) if e.is_displayed()]

    def click(self, xpath, what):
        el = wait(what, lambda: self.visible(xpath))[0]
        self.d.execute_script("arguments[0].scrollIntoView({block: 'center'});", el)
        el.click()

    def tab(self, title):
        self.click(f"//div[contains(@class,'jupyter-widgets')]//li[contains(@class,'lm-TabBar-tab')][.//div[normalize-space(text())='{title}']]",
                   f"workbench tab {title!r}")

    def panel_text(self):
        "Text of the workbench's visible tab panel."
        return " ".join(e.text for e in self.visible("//div[contains(@class,'widget-tab')]//div[contains(@class,'widget-tab-contents')]/div"))

    def button(self, label):
        self.click(f"//button[contains(@class,'jupyter-button')][normalize-space(.)='{label}']", f"button {label!r}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    p.add_argument("--steps", default="6")
    a = p.parse_args()
    wait("JupyterLab server", lambda: urllib.request.urlopen(a.url, timeout=5).status == 200, timeout=120)
    lab = Lab(a.url, a.out, a.chromium, a.chromedriver)
    try:
        wait("the notebook opened with an idle kernel", lambda: lab.visible("//div[contains(@class,'jp-Notebook')]") and
             "Idle" in lab.d.find_element(By.XPATH, "//body").text, timeout=180)
        lab.click("//div[contains(@class,'lm-MenuBar-itemLabel')][text()='Run']", "the Run menu")
        lab.click("//div[contains(@class,'lm-Menu-itemLabel')][text()='Run All Cells']", "Run All Cells")
        wait("the workbench tabs", lambda: lab.visible("//li[contains(@class,'lm-TabBar-tab')][.//div[text()='Sample']]"), timeout=300)
        # Config: a few training steps, typed into the form
        field = wait("the max_train_steps field", lambda: lab.visible(
            "//div[contains(@class,'widget-label')][normalize-space(text())='max_train_steps']/following-sibling::div//input"))[0]
        field.send_keys(Keys.CONTROL, "a"); field.send_keys("abc")
        wait("the form's error beside max_train_steps", lambda: "expected an integer" in lab.panel_text(), timeout=30)
        lab.shot("config_error")
        field.send_keys(Keys.CONTROL, "a"); field.send_keys(a.steps, Keys.TAB)
        wait("the error cleared", lambda: "expected an integer" not in lab.panel_text(), timeout=30)
        lab.button("Save")
        wait("saved", lambda: "saved " in lab.panel_text(), timeout=30)
        lab.shot("config")
        # Data check: table, histogram, clips
        lab.tab("Data"); lab.button("Check data")
        wait("the data report", lambda: "OK: 8 usable samples" in lab.panel_text(), timeout=180)
        wait("clips inline", lambda: len(lab.visible("//div[contains(@class,'widget-tab-contents')]//video")) >= 4)
        assert "example-i2v-start" in lab.panel_text()
        lab.shot("data")
        # Cache
        lab.tab("Cache"); lab.button("Build cache")
        wait("the cache summary", lambda: "cache OK" in lab.panel_text(), timeout=300)
        lab.shot("cache")
        # Memory: the planner's table for the GPU in the fields (on a CPU machine: an A100 40 GB to plan for)
        lab.tab("Memory"); lab.button("Plan")
        wait("the memory plan", lambda: "GPU peak GiB" in lab.panel_text(), timeout=120)
        lab.shot("memory")
        # Train: loss curve, stats, validation video
        lab.tab("Train"); lab.button("Start")
        wait("training finished", lambda: "done — LoRA files" in lab.panel_text(), timeout=400, every=2)
        text = lab.panel_text()
        assert f"step {a.steps}/{a.steps}" in text and "s/step" in text, text
        wait("the loss curve", lambda: lab.visible("//div[contains(@class,'widget-tab-contents')]//img[contains(@class,'widget-image')]"))
        wait("the validation video", lambda: lab.visible("//div[contains(@class,'widget-tab-contents')]//video"))
        lab.shot("train")
        # Sample with the run's LoRA
        lab.tab("Sample")
        lab.click("//div[contains(@class,'widget-tab-contents')]//button[.//i[contains(@class,'fa-refresh')]]", "the LoRA refresh button")
        select = wait("the LoRA picker", lambda: lab.visible("//div[contains(@class,'widget-dropdown')]//select"))[0]
        from selenium.webdriver.support.ui import Select
        wait("lora_peft.safetensors offered", lambda: "lora_peft.safetensors" in [o.text for o in Select(select).options])
        Select(select).select_by_visible_text("lora_peft.safetensors")
        prompt = lab.visible("//div[contains(@class,'widget-textarea')]//textarea")[0]
        prompt.send_keys("a red ball moves from left to right on a dark blue background")
        lab.button("Generate")
        wait("the sampled video", lambda: "sample_000.mp4" in lab.panel_text() and
             lab.visible("//div[contains(@class,'widget-tab-contents')]//video"), timeout=300)
        lab.shot("sample")
    except Exception as e:
        lab.shot("failure")
        print(f"BROWSER TEST FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        lab.d.quit()
    print("BROWSER TEST PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
