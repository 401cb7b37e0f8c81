"""Drive examples/workbench.ipynb in a real browser (Chromium via selenium + chromedriver) on a running JupyterLab:
run the notebook, then config → check → cache (a missing checkpoint first) → memory → train (Stop, a page reload
that finds the run again, Resume, a second Start into the used folder) → sample (a bad size first), asserting the
rendered widgets, failing whenever a red stderr block is visible, and saving a screenshot after each step. Started
by `scripts/browser_test.sh`; exits non-zero on any failure."""
import argparse, re, sys, time, urllib.request
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

    def no_red_blocks(self, where):
        "Fail when the page shows a stderr output (JupyterLab's red block) anywhere."
        red = self.visible("//div[@data-mime-type='application/vnd.jupyter.stderr']")
        assert not red, f"{where}: a red stderr block is visible: {red[0].text[:500]!r}"

    def field(self, label):
        "The input of a config form row or of a labelled widget (`description`)."
        return wait(f"the field {label!r}", lambda: self.visible(
            f"//div[contains(@class,'widget-tab-contents')]//*[contains(@class,'widget-label')][normalize-space(text())='{label}']"
            "/following-sibling::*//input | //div[contains(@class,'widget-tab-contents')]//*[contains(@class,'widget-label')]"
            f"[normalize-space(text())='{label}']/following-sibling::input"))[0]

    def type_into(self, el, text):
        el.send_keys(Keys.CONTROL, "a"); el.send_keys(Keys.DELETE)
        if text: el.send_keys(text)
        el.send_keys(Keys.TAB)

    def run_all(self):
        wait("the notebook opened with an idle kernel", lambda: self.visible("//div[contains(@class,'jp-Notebook')]") and
             "Idle" in self.d.find_element(By.XPATH, "//body").text, timeout=180)
        self.click("//div[contains(@class,'lm-MenuBar-itemLabel')][text()='Run']", "the Run menu")
        self.click("//div[contains(@class,'lm-Menu-itemLabel')][text()='Run All Cells']", "Run All Cells")
        wait("the workbench tabs", lambda: self.visible("//li[contains(@class,'lm-TabBar-tab')][.//div[text()='Sample']]"), timeout=300)


def one_line_error(lab, says, what):
    "Wait for the tab's status to show `says` as its bold line, with the details collapsed (no traceback on view)."
    wait(what, lambda: says in lab.panel_text(), timeout=120)
    text = lab.panel_text()
    assert "Traceback" not in text, f"{what}: a traceback is on view: {text[:800]}"
    assert lab.visible("//div[contains(@class,'widget-tab-contents')]//details/summary[normalize-space(.)='details']"), what


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    p.add_argument("--steps", default="6", help="steps the resumed run adds after the stop")
    a = p.parse_args()
    wait("JupyterLab server", lambda: urllib.request.urlopen(a.url, timeout=5).status == 200, timeout=120)
    lab = Lab(a.url, a.out, a.chromium, a.chromedriver)
    try:
        lab.run_all()
        lab.no_red_blocks("the notebook ran")
        # Config: a bad value shows its error beside the field
        field = lab.field("max_train_steps")
        lab.type_into(field, "abc")
        wait("the form's error beside max_train_steps", lambda: "expected an integer" in lab.panel_text(), timeout=30)
        lab.shot("config_error")
        lab.type_into(field, "400")
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
        # Cache: a missing checkpoint first — one line, details collapsed — then the real one
        lab.tab("Config")
        ckpt = lab.field("pretrained_model_name_or_path")
        real = ckpt.get_attribute("value")
        lab.type_into(ckpt, "/nonexistent/LongCat-Video")
        lab.tab("Cache"); lab.button("Build cache")
        one_line_error(lab, "directory not found — point it at the checkpoint folder", "the Cache tab's error")
        lab.no_red_blocks("the Cache tab's error")
        lab.shot("cache_error")
        lab.tab("Config"); lab.type_into(lab.field("pretrained_model_name_or_path"), real)
        lab.tab("Cache"); lab.button("Build cache")
        wait("the cache summary", lambda: "cache OK" in lab.panel_text() and "directory not found" not in lab.panel_text(), timeout=300)
        lab.shot("cache")
        # Memory: on a CPU machine it says so and plans for the card in the fields
        lab.tab("Memory"); lab.button("Plan")
        wait("the memory plan", lambda: "GPU peak GiB" in lab.panel_text(), timeout=120)
        text = lab.panel_text()
        assert "No CUDA GPU detected here" in text and ("fits" in text) and "The released 13.6B model on the same bucket" in text, text
        lab.shot("memory")
        # Train: start the 400-step run, reload the page mid-run and find it again, stop, resume for a few more steps
        lab.tab("Train"); lab.button("Start")
        wait("training under way", lambda: re.search(r"step ([3-9]|\d\d+)/400", lab.panel_text()), timeout=300, every=1)
        lab.shot("train_running")
        lab.d.refresh()
        lab.run_all()
        lab.tab("Train")
        wait("the running run found again", lambda: "from an earlier session" in lab.panel_text(), timeout=120)
        lab.shot("train_reattached")
        lab.button("Stop")
        wait("stopped", lambda: "stopped at step" in lab.panel_text(), timeout=300, every=1)
        stopped = int(re.search(r"stopped at step (\d+)", lab.panel_text())[1])
        lab.shot("train_stopped")
        target = stopped + int(a.steps)
        lab.type_into(lab.field("steps"), str(target))
        lab.button("Resume")
        wait("training finished", lambda: "done — LoRA files" in lab.panel_text(), timeout=400, every=2)
        text = lab.panel_text()
        assert f"step {target}/{target}" in text and "s/step" in text, text
        wait("the loss curve", lambda: lab.visible("//div[contains(@class,'widget-tab-contents')]//img[contains(@class,'widget-image')]"))
        wait("the validation video", lambda: lab.visible("//div[contains(@class,'widget-tab-contents')]//video"))
        lab.no_red_blocks("training")
        lab.shot("train")
        lab.button("Start")                        # a second Start into the used folder: the choices, in the tab
        wait("the used-folder choices", lambda: "already holds a run" in lab.panel_text() and
             lab.visible("//button[normalize-space(.)='Start in a new folder']"), timeout=60)
        lab.shot("train_used_folder")
        # Sample: a bad size first — one line — then the run's LoRA
        lab.tab("Sample")
        lab.click("//div[contains(@class,'widget-tab-contents')]//button[.//i[contains(@class,'fa-refresh')]]", "the LoRA refresh button")
        select = wait("the LoRA picker", lambda: lab.visible("//div[contains(@class,'widget-dropdown')]//select"))[0]
        from selenium.webdriver.support.ui import Select
        wait("lora_peft.safetensors offered", lambda: "lora_peft.safetensors" in [o.text for o in Select(select).options])
        Select(select).select_by_visible_text("lora_peft.safetensors")
        prompt = lab.visible("//div[contains(@class,'widget-textarea')]//textarea")[0]
        prompt.send_keys("a red ball moves from left to right on a dark blue background")
        lab.type_into(lab.field("size"), "480p")
        lab.button("Generate")
        one_line_error(lab, 'Sample tab: size = "480p": expected "WIDTHxHEIGHT"', "the Sample tab's error")
        lab.no_red_blocks("the Sample tab's error")
        lab.shot("sample_error")
        lab.type_into(lab.field("size"), "")
        lab.button("Generate")
        wait("the sampled video", lambda: "sample_000.mp4" in lab.panel_text() and
             lab.visible("//div[contains(@class,'widget-tab-contents')]//video"), timeout=300)
        lab.no_red_blocks("sampling")
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
