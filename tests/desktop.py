"""A real desktop for tests and benchmarks: Xvfb, PCManFM in icon view, screenshots.

Everything runs in a private HOME (configuration, thumbnail cache, runtime directory) on a
display that Xvfb picks itself (-displayfd), so sessions running side by side never meet.
Every process started here is ended by its PID, and every wait has a deadline.
"""
from __future__ import annotations

import hashlib
import os
import select
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

TOOLS = ("Xvfb", "pcmanfm", "xdotool")
SCREEN = (1024, 768)
#: the icon view's icon size: thumbnails are scaled to it (long side)
ICON_SIZE = 48
#: PCManFM's settings: icon view, no side pane, no blinking cursor (so that a settled
#: window gives identical screenshots), thumbnails as libfm's defaults have them
#: (show_thumbnail, thumbnail_local, thumbnail_max=2048 KB; see README)
PCMANFM_CONF = f"""[ui]
win_width={SCREEN[0]}
win_height={SCREEN[1]}
maximized=0
side_pane_mode=places;hidden;
view_mode=icon
show_hidden=0
show_statusbar=1
always_show_tabs=0
"""
LIBFM_CONF = """[config]
single_click=0
thumbnail_local=1
thumbnail_max=2048

[ui]
big_icon_size={icon_size}
thumbnail_size=128
show_thumbnail={show_thumbnail}
"""
GTKRC = "gtk-cursor-blink = 0\ngtk-enable-animations = 0\n"


def missing() -> str | None:
    """Why no desktop can run here (a sentence), or None."""
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    if absent:
        return f"{', '.join(absent)} not installed (./dev setup installs them)"
    try:
        from PIL import features
    except ImportError:
        return "Pillow is not installed"
    if not features.check("xcb"):
        return "Pillow was built without XCB: it cannot take screenshots"
    return None


def end(proc: subprocess.Popen | None, timeout: float = 5) -> None:
    """End a process this module started (TERM, then KILL), by its PID only."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return 0.0


def bytes_read(pid: int) -> int:
    """What a process has read so far through read(2) and friends (its rchar)."""
    try:
        with open(f"/proc/{pid}/io") as fh:
            for line in fh:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def waiting_on_files(pid: int) -> bool:
    """Whether a thread of the process waits for a file system: for a FUSE daemon's
    answer (it then sleeps in the kernel's FUSE code) or for the disk (state D)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{pid}/task/{tid}/wchan") as fh:
                wchan = fh.read()
        except (OSError, IndexError):
            continue
        if state == "D" or "fuse" in wchan or wchan == "request_wait_answer":
            return True
    return False


@dataclass
class Box:
    left: int
    top: int
    right: int
    bottom: int

    def crop(self, image):
        return image.crop((self.left, self.top, self.right, self.bottom))


def _longest_run(flags) -> tuple[int, int]:
    """Start and end (exclusive) of the longest run of True in a 1-d array."""
    best, start = (0, 0), None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return best


def view_box(screenshot) -> Box:
    """The folder view of a window showing an empty folder: the largest white area (its
    longest white run down the middle column, then across the middle row)."""
    import numpy as np
    white = (np.asarray(screenshot.convert("RGB")) == 255).all(axis=2)
    top, bottom = _longest_run(white[:, white.shape[1] * 3 // 5])
    left, right = _longest_run(white[(top + bottom) // 2])
    if bottom - top < 100 or right - left < 100:
        raise RuntimeError("no empty folder view found in the screenshot")
    return Box(left + 2, top + 2, right - 2, bottom - 2)


def items_shown(view_image) -> bool:
    """Whether a folder view shows something: neither all background (white) nor no
    background at all (the window not drawn yet)."""
    import numpy as np
    white = (np.asarray(view_image.convert("RGB")) == 255).all(axis=2).mean()
    return 0.02 < white < 0.998


@dataclass
class Timeline:
    """What a file manager showed after it was started on a folder, in seconds from the
    start: the window, the first items in the view, the first screenshot equal to the
    settled view (its thumbnails drawn), and when the file manager stopped working (no
    CPU, no reads, no thread waiting on a file system). `settled` is False when that
    did not happen before the deadline."""
    window: float | None = None
    first_items: float | None = None
    view_final: float | None = None
    idle: float | None = None
    settled: bool = False
    bytes_read: int = 0
    shots: int = 0
    requests: int = 0       # what a daemon counted meanwhile, where the caller measures it


class FileManager:
    """One PCManFM process showing one folder."""

    def __init__(self, desktop: Desktop, folder: Path, proc: subprocess.Popen, started: float):
        self.desktop, self.folder, self.proc, self.started = desktop, folder, proc, started

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def windows(self) -> list[tuple[str, str]]:
        """The visible windows of this process: (id, title)."""
        ids = self.desktop.xdotool("search", "--onlyvisible", "--pid", str(self.pid)).split()
        return [(wid, self.desktop.xdotool("getwindowname", wid).strip()) for wid in ids]

    def wait_window(self, timeout: float) -> str:
        """The id of the main window, once it is mapped."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for wid, title in self.windows():
                if title == self.folder.name:
                    return wid
            if not self.alive():
                raise RuntimeError(f"pcmanfm exited with status {self.proc.returncode}")
            time.sleep(0.05)
        raise TimeoutError(f"no window for {self.folder} within {timeout:g} s")

    def watch(self, view: Box, timeout: float, quiet: float = 2.0, interval: float = 0.1) -> Timeline:
        """Screenshots of the folder view until it has not changed for `quiet` seconds
        while the file manager did no work, or until `timeout` seconds after the start."""
        line = Timeline()
        history: list[tuple[float, bytes]] = []
        last_change = last_busy = time.monotonic()
        cpu, read = cpu_seconds(self.pid), bytes_read(self.pid)
        while True:
            now = time.monotonic()
            t = now - self.started
            if line.window is None and self.windows():
                line.window = t
            image = view.crop(self.desktop.screenshot())
            digest = hashlib.blake2b(image.tobytes(), digest_size=16).digest()
            line.shots += 1
            if line.first_items is None and line.window is not None and items_shown(image):
                line.first_items = t
            if history and digest != history[-1][1]:
                last_change = now
            history.append((t, digest))
            new_cpu, new_read = cpu_seconds(self.pid), bytes_read(self.pid)
            if new_read != read or new_cpu - cpu > 0.02 * interval or waiting_on_files(self.pid):
                last_busy, line.idle = now, None
            elif line.idle is None:
                line.idle = t
            cpu, read = new_cpu, new_read
            if line.first_items is not None and now - max(last_change, last_busy) >= quiet:
                line.settled = True
                break
            if t >= timeout or not self.alive():
                break
            time.sleep(interval)
        # the view's last state counts as reached if it shows items and then held for
        # `quiet` seconds (the file manager may still be busy: thumbnails out of sight)
        since = len(history) - 1
        while since and history[since - 1][1] == history[-1][1]:
            since -= 1
        if line.first_items is not None and history[-1][0] - history[since][0] >= quiet:
            line.view_final = history[since][0]
        if not line.settled:
            line.idle = None
        line.bytes_read = read
        return line

    def close(self) -> None:
        end(self.proc)


class Desktop:
    """Xvfb with a private HOME for PCManFM. Use as a context manager."""

    def __init__(self, home: Path):
        self.home = home
        self.display: str | None = None
        self.xvfb: subprocess.Popen | None = None
        self.log = home / "desktop.log"
        self._launches = 0

    def __enter__(self) -> Desktop:
        reason = missing()
        if reason:
            raise RuntimeError(reason)
        (self.home / ".gtkrc-2.0").write_text(GTKRC)
        try:
            self._start_xvfb()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        end(self.xvfb)
        self.xvfb = None

    def _start_xvfb(self, timeout: float = 20) -> None:
        read_fd, write_fd = os.pipe()
        with open(self.log, "ab") as log:
            self.xvfb = subprocess.Popen(
                ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24",
                 "-nolisten", "tcp", "-noreset"],
                pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        os.close(write_fd)
        number = b""
        deadline = time.monotonic() + timeout
        try:
            while not number.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                    raise TimeoutError(f"Xvfb did not start within {timeout:g} s")
                chunk = os.read(read_fd, 16)
                if not chunk:
                    raise RuntimeError(f"Xvfb exited: {self.log.read_text()[-500:]}")
                number += chunk
        finally:
            os.close(read_fd)
        self.display = f":{int(number)}"

    def env(self) -> dict[str, str]:
        """PCManFM's environment: this display, this HOME, its own runtime directory per
        launch (where its single-instance socket lives), no session bus."""
        self._launches += 1
        runtime = self.home / f"run{self._launches}"
        runtime.mkdir(mode=0o700)
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("DBUS_", "XDG_", "GTK", "WAYLAND", "SESSION_MANAGER"))}
        env.update(DISPLAY=self.display, HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / ".config"),
                   XDG_CACHE_HOME=str(self.home / ".cache"), XDG_DATA_HOME=str(self.home / ".local" / "share"),
                   XDG_RUNTIME_DIR=str(runtime), NO_AT_BRIDGE="1", GTK2_RC_FILES=str(self.home / ".gtkrc-2.0"))
        return env

    def xdotool(self, *args: str, timeout: float = 10) -> str:
        done = subprocess.run(["xdotool", *args], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "DISPLAY": self.display})
        return done.stdout

    def screenshot(self):
        from PIL import ImageGrab
        return ImageGrab.grab(xdisplay=self.display)

    def folder_view(self, empty: Path, timeout: float = 20) -> Box:
        """Where PCManFM draws a folder's items, found on a window showing `empty`
        (the same box twice in a row: the window is drawn)."""
        fm = self.open(empty)
        try:
            fm.wait_window(timeout)
            deadline, last = time.monotonic() + timeout, None
            while True:
                try:
                    box = view_box(self.screenshot())
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise
                    box = None
                if box is not None and box == last:
                    return box
                last = box
                time.sleep(0.2)
        finally:
            fm.close()

    def open(self, folder: Path, thumbnails: bool = True) -> FileManager:
        """PCManFM started on `folder` (its clock starts now). Its settings are written
        afresh each time, since PCManFM saves its own over them when it exits."""
        config = self.home / ".config"
        libfm = LIBFM_CONF.format(show_thumbnail=int(thumbnails), icon_size=ICON_SIZE)
        for path, text in ((config / "pcmanfm" / "default" / "pcmanfm.conf", PCMANFM_CONF),
                           (config / "libfm" / "libfm.conf", libfm)):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        with open(self.log, "ab") as log:
            started = time.monotonic()
            proc = subprocess.Popen(["pcmanfm", str(folder)], env=self.env(), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, start_new_session=True)
        return FileManager(self, folder, proc, started)


def picture_score(screenshot, picture, long_sides=(ICON_SIZE - 1, ICON_SIZE)) -> float:
    """How well `picture` (e.g. a frame read from the mount), scaled as a thumbnail
    would be (its long side one of `long_sides` pixels, allowing for rounding), matches
    somewhere in the screenshot: 1 is a perfect match (normalised cross-correlation)."""
    import cv2
    import numpy as np
    screen = np.asarray(screenshot.convert("RGB"), dtype=np.float32)
    picture = np.asarray(picture.convert("RGB"), dtype=np.float32)
    h, w = picture.shape[:2]
    best = -1.0
    for side in long_sides:
        scale = side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        template = cv2.resize(picture, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        if template.std() == 0:         # a uniform picture matches nothing in particular
            continue
        best = max(best, float(cv2.matchTemplate(screen, template, cv2.TM_CCOEFF_NORMED).max()))
    return best
