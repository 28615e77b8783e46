"""Stopping the real services the tests start (coturn, Caddy, nginx, Prometheus): politely,
then by force if they do not go within ``timeout`` seconds."""

from __future__ import annotations

import asyncio
import subprocess


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def stop_subprocess(process: asyncio.subprocess.Process, timeout: float) -> None:
    if process.returncode is None:
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
