"""A real RTSP server for the tests: GStreamer's gst-rtsp-server, run with the system Python
(`/usr/bin/python3 rtsp_server.py PORT`, needs python3-gi and gir1.2-gst-rtsp-server-1.0).

Serves a moving test pattern as MJPEG over RTP at rtsp://127.0.0.1:PORT/cam (320x240, 25 fps)
on 127.0.0.1 only, prints "READY" once listening, and runs until killed.
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(sys.argv[1])
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch("( videotestsrc is-live=true pattern=ball "
                   "! video/x-raw,format=I420,width=320,height=240,framerate=25/1 "
                   "! jpegenc ! rtpjpegpay name=pay0 pt=26 )")
factory.set_shared(True)
server.get_mount_points().add_factory("/cam", factory)
if server.attach(None) == 0:
    sys.exit(f"cannot listen on 127.0.0.1:{sys.argv[1]}")
print("READY", flush=True)
GLib.MainLoop().run()
