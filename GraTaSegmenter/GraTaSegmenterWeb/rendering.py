"""Offscreen OpenGL for the server's slice and 3D views.

The views are rendered on the server and streamed to the page as pictures, so
the server needs an OpenGL context without a screen. VTK's wheels choose the
window class from ``VTK_DEFAULT_OPENGL_WINDOW`` when the first render window is
made: OSMesa (``vtkOSOpenGLRenderWindow``, software, needs ``libOSMesa``) or
EGL (``vtkEGLRenderWindow``, Mesa's or a GPU driver's). Without the variable,
on Linux without a display, VTK first tries X and prints a warning for every
view before falling back. This must run before anything imports VTK's rendering.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

VARIABLE = "VTK_DEFAULT_OPENGL_WINDOW"
OSMESA = "vtkOSOpenGLRenderWindow"
EGL = "vtkEGLRenderWindow"


def choose_offscreen_backend(environ: dict | None = None, find_library=ctypes.util.find_library) -> str | None:
    """Set ``VTK_DEFAULT_OPENGL_WINDOW`` where the platform has no screen to open
    windows on; returns the class chosen, or None when the choice is left to VTK
    (a value set by the user, a display, macOS and Windows, whose native windows
    render offscreen)."""
    environ = os.environ if environ is None else environ
    if environ.get(VARIABLE):
        return None
    if not sys.platform.startswith("linux") or environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"):
        return None
    backend = OSMESA if find_library("OSMesa") else EGL
    environ[VARIABLE] = backend
    return backend
