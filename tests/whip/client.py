"""An independent WHIP publisher / WHEP viewer built on aiortc, for Switchboard's tests.

    python3 client.py publish URL TOKEN SECONDS   # sends a synthetic VP8 video + Opus audio
    python3 client.py watch URL TOKEN SECONDS     # receives, decodes, prints a JSON summary

aiortc skips loopback when gathering, so host addresses are pinned to 127.0.0.1.
"""

import asyncio
import json
import sys
import time
import urllib.request

import aioice.ice
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from av import VideoFrame

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


class Pattern(VideoStreamTrack):
    """A moving gradient, 320x240."""

    def __init__(self):
        super().__init__()
        self.n = 0

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        self.n += 1
        frame = VideoFrame(320, 240, "yuv420p")
        row = bytes((x + self.n * 4) % 256 for x in range(frame.planes[0].line_size))
        frame.planes[0].update(row * 240)
        for plane in frame.planes[1:]:
            plane.update(bytes([128]) * plane.buffer_size)
        frame.pts = pts
        frame.time_base = time_base
        return frame


def post(url, token, sdp):
    req = urllib.request.Request(
        url,
        data=sdp.encode(),
        method="POST",
        headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        headers = {k: resp.headers.get(k) for k in ("Location", "ETag", "Link")}
        return resp.status, headers, resp.read().decode()


def delete(base, location, token):
    req = urllib.request.Request(
        base + location, method="DELETE", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


async def run(mode, url, token, seconds):
    pc = RTCPeerConnection()
    frames = {"video": 0, "audio": 0}
    if mode == "publish":
        pc.addTrack(AudioStreamTrack())
        pc.addTrack(Pattern())
    else:
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")

        @pc.on("track")
        def on_track(track):
            async def pump():
                while True:
                    try:
                        await track.recv()
                    except Exception:
                        return
                    frames[track.kind] += 1

            asyncio.ensure_future(pump())

    await pc.setLocalDescription(await pc.createOffer())
    status, headers, answer = await asyncio.get_event_loop().run_in_executor(
        None, post, url, token, pc.localDescription.sdp
    )
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    print(json.dumps({"event": "answered", "status": status, "location": headers.get("Location"),
                      "etag": headers.get("ETag")}), flush=True)
    start = time.time()
    while time.time() - start < seconds:
        await asyncio.sleep(0.5)
    base = url.split("/whip/")[0].split("/whep/")[0]
    deleted = delete(base, headers["Location"], token)
    print(json.dumps({"event": "done", "state": pc.connectionState, "frames": frames,
                      "deleted": deleted}), flush=True)
    await pc.close()


if __name__ == "__main__":
    mode, url, token, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    asyncio.run(run(mode, url, token, seconds))
