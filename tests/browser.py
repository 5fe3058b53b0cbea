"""A real headless browser for the tests: Debian's chromium, driven over the DevTools protocol on a pipe
(--remote-debugging-pipe: JSON messages ending in a NUL byte, commands on fd 3, replies and events on fd 4),
so no websocket library and no port are needed.

`open_page(path)` loads a file:// page and returns what a person would see go wrong: every <img> and <audio>
element and whether it loaded (the image decoded with a size, the sound's metadata read with a duration), and
every error the DevTools console showed (console.error, uncaught exceptions, resources that failed to load).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium")

# Waits for every <audio> to have its metadata or an error (at most 20 s), then reports each element.
MEDIA_CHECK = """new Promise(done => {
  const audios = [...document.querySelectorAll("audio")], start = Date.now();
  const poll = () => {
    if (audios.every(a => a.readyState >= 1 || a.error !== null) || Date.now() - start > 20000) {
      done({
        images: [...document.images].map(i => [i.getAttribute("src"), i.complete && i.naturalWidth > 0]),
        audio: audios.map(a => [a.getAttribute("src"), a.readyState >= 1 && a.duration > 0, a.duration]),
      });
    } else setTimeout(poll, 50);
  };
  poll();
})"""


@dataclass
class PageCheck:
    images: list[tuple[str, bool]]  # (src, loaded)
    audio: list[tuple[str, bool, float]]  # (src, loaded, duration in s)
    console_errors: list[str]
    text: str  # document.body.innerText
    screenshot: bytes  # PNG of the viewport


def _move_above_4(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 5)
    os.close(fd)
    return high


class _DevTools:
    def __init__(self, profile: str) -> None:
        commands_r, self._commands = os.pipe()
        self._replies, replies_w = os.pipe()
        # the child's ends above fd 4, where redirecting 3 and 4 cannot overwrite them
        commands_r, replies_w = (_move_above_4(fd) for fd in (commands_r, replies_w))
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{commands_r} 4>&{replies_w}', CHROMIUM, "--headless", "--no-sandbox",
             "--disable-gpu", "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(commands_r, replies_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(commands_r)
        os.close(replies_w)
        self._buffer, self._id, self.events = b"", 0, []

    def _message(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._replies, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._id += 1
        command = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._commands, json.dumps(command).encode() + b"\0")
        while True:
            message = self._message()
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, event: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(e.get("method") == event for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} within {timeout_s} s")
            self.events.append(self._message())

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.process.wait(timeout=10)
        except (RuntimeError, OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            os.close(self._commands)
            os.close(self._replies)


def _console_errors(events: list[dict[str, Any]]) -> list[str]:
    errors = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            errors.append(params["exceptionDetails"].get("exception", {}).get("description", "exception"))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            errors.append(f"{params['entry']['text']} {params['entry'].get('url', '')}".strip())
    return errors


def open_page(path: str | os.PathLike, width: int = 1100, height: int = 900) -> PageCheck:
    """Load `path` in headless chromium at width x height; check its media, read its text, take a screenshot."""
    with tempfile.TemporaryDirectory(prefix="his-chromium-") as profile:
        browser = _DevTools(profile)
        try:
            target = browser.send("Target.createTarget", url="about:blank")["targetId"]
            session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                browser.send(f"{domain}.enable", session)
            browser.send("Emulation.setDeviceMetricsOverride", session, width=width, height=height,
                         deviceScaleFactor=1, mobile=False)
            browser.send("Page.navigate", session, url=Path(path).resolve().as_uri())
            browser.wait_for("Page.loadEventFired")
            media = browser.send("Runtime.evaluate", session, expression=MEDIA_CHECK, awaitPromise=True,
                                 returnByValue=True)["result"]["value"]
            text = browser.send("Runtime.evaluate", session, expression="document.body.innerText",
                                returnByValue=True)["result"]["value"]
            screenshot = base64.b64decode(browser.send("Page.captureScreenshot", session, format="png")["data"])
            return PageCheck([tuple(i) for i in media["images"]], [tuple(a) for a in media["audio"]],
                             _console_errors(browser.events), text, screenshot)
        finally:
            browser.close()
