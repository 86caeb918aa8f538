"""What runs inside a box: the agent (stdlib only) and the kernel driver.

These files are mounted read-only into boxes (or copied into a container's
volume), never imported by the host side.
"""
