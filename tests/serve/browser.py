"""`arq serve`'s web pages in a real browser: Debian's Chromium, headless, driven by
Selenium through Debian's ChromeDriver.

Usage: browser.py TEXT_URL PIXEL_URL SCREENSHOT_DIR
- the text page: typing shows next-token suggestions with probabilities (from /v1/next,
  the cache reused as the text grows); clicking one appends it; Generate streams text;
- the PixelCNN page: 16 samples appear; one is loaded, a block of pixels is marked
  missing by dragging the mouse over the canvas, Inpaint fills them, and the result
  differs from the image only inside the mask.
Screenshots go to SCREENSHOT_DIR. Prints PASS/FAIL lines and a `test result:` line.
"""
import json
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

text_url, pixel_url, shots = sys.argv[1:4]
os.makedirs(shots, exist_ok=True)
passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"browser: PASS {name}")
    else:
        failed += 1
        print(f"browser: FAIL {name} {detail}")


opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--window-size=1000,900", "--disable-dev-shm-usage"]:
    opts.add_argument(flag)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
wait = WebDriverWait(driver, 60)
try:
    # --- text prediction -------------------------------------------------------------
    driver.get(text_url)
    box = driver.find_element(By.ID, "text")
    box.send_keys("The little robot")
    wait.until(lambda d: "reused" in d.find_element(By.ID, "status").text
               and d.find_elements(By.CSS_SELECTOR, "#suggestions li"))
    time.sleep(0.5)  # the last keystroke's answer
    items = driver.find_elements(By.CSS_SELECTOR, "#suggestions li")
    probs = [float(li.find_element(By.CLASS_NAME, "p").text.rstrip("%")) for li in items]
    check("typing shows next-token suggestions with probabilities", len(items) == 8 and probs == sorted(probs, reverse=True), probs)
    status = driver.find_element(By.ID, "status").text
    check("the suggestions reuse the cached text", "reused" in status, status)
    driver.save_screenshot(os.path.join(shots, "text-suggestions.png"))
    first = items[0].get_attribute("data-token")
    items[0].click()
    check("clicking a suggestion appends it", box.get_attribute("value") == "The little robot" + first, box.get_attribute("value"))
    before = len(box.get_attribute("value"))
    driver.find_element(By.ID, "max").clear()
    driver.find_element(By.ID, "max").send_keys("30")
    driver.find_element(By.ID, "generate").click()
    wait.until(lambda d: "tokens in" in d.find_element(By.ID, "genstatus").text)
    check("Generate streams text into the box", len(box.get_attribute("value")) > before + 10, box.get_attribute("value"))
    driver.save_screenshot(os.path.join(shots, "text-generated.png"))

    # --- PixelCNN: sample and inpaint ------------------------------------------------
    driver.get(pixel_url)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#samples canvas")) == 16)
    check("16 samples appear", True)
    driver.find_elements(By.CSS_SELECTOR, "#samples canvas")[3].click()
    canvas = driver.find_element(By.ID, "canvas")
    image = json.loads(canvas.get_attribute("data-levels"))
    # Drag over the middle of the canvas: rows and columns 2..5 of 8 (the marking tool is the default).
    size = canvas.size["width"]
    cell = size / 8
    chain = ActionChains(driver)
    for row in range(2, 6):
        y = int((row + 0.5) * cell - size / 2)
        chain.move_to_element_with_offset(canvas, int(2.5 * cell - size / 2), y).click_and_hold()
        chain.move_to_element_with_offset(canvas, int(5.5 * cell - size / 2), y).release()
    chain.perform()
    mask = json.loads(canvas.get_attribute("data-mask"))
    check("dragging marks a block of pixels missing", sum(mask) == 16, mask)
    driver.find_element(By.ID, "inpaint").click()
    wait.until(lambda d: d.find_element(By.ID, "result").get_attribute("data-levels"))
    out = json.loads(driver.find_element(By.ID, "result").get_attribute("data-levels"))
    outside = [i for i in range(64) if not mask[i] and out[i] != image[i]]
    check("the inpainted image differs only inside the mask", not outside and len(out) == 64, outside)
    check("the page says how it inpainted", "filled" in driver.find_element(By.ID, "status").text,
          driver.find_element(By.ID, "status").text)
    driver.save_screenshot(os.path.join(shots, "pixel-inpainted.png"))
finally:
    driver.quit()

status = "ok" if failed == 0 else "FAILED"
print(f"test result: {status}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out")
sys.exit(1 if failed else 0)
