"""A real headless Chromium driven over the DevTools protocol through ``--remote-debugging-pipe``.

Chromium reads protocol commands (JSON, each followed by a NUL byte) from file descriptor 3 and writes replies
and events to descriptor 4, so no websocket library and no open port are needed. ``open_page`` loads a URL and
hands back what a reader of the page would meet: console messages, uncaught exceptions, network requests (and
failures), JavaScript evaluation for checks, and a full-page screenshot.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# no sync, no component/extension updates, no first-run UI: nothing may reach the network but the page itself
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
         "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-default-apps", "--disable-extensions", "--mute-audio",
         "--disable-dev-shm-usage", "--hide-scrollbars"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Page:
    process: subprocess.Popen
    to_browser: int
    from_browser: int
    session: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    _next_id: int = 0
    _buffer: bytes = b""

    def send(self, method: str, params: dict[str, Any] | None = None, session: bool = True,
             timeout: float = 60) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        reply = self._wait(lambda m: m.get("id") == self._next_id, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, timeout: float = 60) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        return self._wait(lambda m: m.get("method") == method, timeout)

    def _wait(self, wanted: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if wanted(message):
                    return message
            if time.monotonic() > deadline:
                raise TimeoutError("no reply from Chromium in time")
            chunk = os.read(self.from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium closed the pipe (exit status {self.process.poll()})")
            self._buffer += chunk

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        Path(path).write_bytes(base64.b64decode(data))

    # what the page did, from the recorded events
    def console_errors(self) -> list[str]:
        found = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif event.get("method") == "Runtime.exceptionThrown":
                found.append(str(params.get("exceptionDetails", {}).get("text")))
            elif event.get("method") == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                found.append(str(params["entry"].get("text")))
        return found

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def failed_requests(self) -> list[str]:
        return [str(e["params"].get("errorText")) for e in self.events if e.get("method") == "Network.loadingFailed"]


class open_page:
    """``with open_page(url, width) as page:`` — the page loaded (load event fired) in a fresh headless Chromium."""

    def __init__(self, url: str, width: int = 1280, height: int = 900) -> None:
        self.url, self.width, self.height = url, width, height

    def __enter__(self) -> Page:
        binary = chromium_path()
        assert binary, "chromium is not installed"
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        cmd_read, cmd_write = os.pipe()   # we write commands, Chromium reads them on fd 3
        out_read, out_write = os.pipe()   # Chromium writes replies on fd 4, we read them

        def child_fds() -> None:
            # in the child only: the pipe ends become fds 3 and 4 (dup2 makes them inheritable; everything else
            # Python opened is non-inheritable and closes at exec, so close_fds=False leaks nothing)
            a, b = os.dup(cmd_read), os.dup(out_write)  # out of the way of 3 and 4 first
            os.dup2(a, 3)
            os.dup2(b, 4)

        process = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile}",
                                    f"--window-size={self.width},{self.height}", "about:blank"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   preexec_fn=child_fds, close_fds=False)
        os.close(cmd_read)
        os.close(out_write)
        self.page = page = Page(process, cmd_write, out_read)
        target = page.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        page.session = page.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.send(f"{domain}.enable")
        page.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        page.send("Page.navigate", {"url": self.url})
        page.wait_event("Page.loadEventFired")
        return page

    def __exit__(self, *exc: Any) -> None:
        try:
            self.page.send("Browser.close", session=False, timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.page.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.page.process.kill()
            self.page.process.wait()
        os.close(self.page.to_browser)
        os.close(self.page.from_browser)
        shutil.rmtree(self.profile, ignore_errors=True)
