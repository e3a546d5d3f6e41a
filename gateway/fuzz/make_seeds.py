#!/usr/bin/env python3
"""Writes the seed inputs for the sftp_packets and ftp_listing fuzz targets (the config
seeds are real config files, kept as they are). Run from anywhere; rewrites seeds/."""
import pathlib
import struct

HERE = pathlib.Path(__file__).resolve().parent / "seeds"


def s(b):
    b = b.encode() if isinstance(b, str) else b
    return struct.pack(">I", len(b)) + b


def pkt(t, rid, body=b""):
    payload = bytes([t]) + struct.pack(">I", rid) + body
    return struct.pack(">I", len(payload)) + payload


ATTRS_NONE = struct.pack(">I", 0)
# size, uid/gid, permissions, atime/mtime
ATTRS_ALL = struct.pack(">IQIIIII", 0x0F, 10, 0, 0, 0o100644, 1, 2)
FLAGS = struct.pack(">I", 0x1A)  # WRITE|CREAT|TRUNC

SFTP = {
    "session": b"".join([
        pkt(16, 1, s(".")),                                    # realpath
        pkt(3, 2, s("/files/a.txt") + FLAGS + ATTRS_NONE),     # open
        pkt(6, 3, s("1") + struct.pack(">Q", 0) + s(b"x" * 64)),  # write
        pkt(5, 4, s("1") + struct.pack(">QI", 0, 32768)),      # read
        pkt(8, 5, s("1")),                                     # fstat
        pkt(10, 6, s("1") + ATTRS_ALL),                        # fsetstat
        pkt(4, 7, s("1")),                                     # close
        pkt(11, 8, s("/files")),                               # opendir
        pkt(12, 9, s("2")),                                    # readdir
        pkt(17, 10, s("/files/a.txt")),                        # stat
        pkt(7, 11, s("/files/a.txt")),                         # lstat
        pkt(9, 12, s("/files/a.txt") + ATTRS_ALL),             # setstat
        pkt(18, 13, s("/files/a.txt") + s("/files/b.txt")),    # rename
        pkt(14, 14, s("/files/d") + ATTRS_NONE),               # mkdir
        pkt(15, 15, s("/files/d")),                            # rmdir
        pkt(13, 16, s("/files/b.txt")),                        # remove
    ]),
    "extensions": b"".join([
        pkt(200, 1, s("posix-rename@openssh.com") + s("/a") + s("/b")),
        pkt(200, 2, s("statvfs@openssh.com") + s("/files")),
        pkt(200, 3, s("fsync@openssh.com") + s("1")),
        pkt(200, 4, s("limits@openssh.com")),
        pkt(200, 5, s("hardlink@openssh.com") + s("/a") + s("/b")),
        pkt(200, 6, s("statvfs@openssh.com")),
    ]),
    "refused": b"".join([
        pkt(19, 1, s("/files/l")),                             # readlink
        pkt(20, 2, s("/etc/passwd") + s("/files/l")),          # symlink
        pkt(42, 3, b"\0" * 8),                                 # unknown type
        pkt(101, 4, b""),                                      # a reply type from a client
    ]),
    "traversal": b"".join([
        pkt(17, 1, s("/files/../../etc/passwd")),
        pkt(17, 2, s("%2e%2e/%2e%2e/etc")),
        pkt(17, 3, s("..\\..\\windows")),
        pkt(17, 4, s(b"/files/a\0b")),
        pkt(17, 5, s("/" + "a" * 5000)),
        pkt(17, 6, s("/files/\u2025/\uff0e\uff0e/x")),
        pkt(17, 7, s(b"/files/\xff\xfe")),
    ]),
    "truncated": pkt(3, 1, s("/x"))[:-3] + struct.pack(">I", 0xFFFFFFF0),
}

LISTING = {
    # LIST from vsftpd (even first byte), with a symlink, spaces and a year.
    "vsftpd-list": b"\0" + b"\r\n".join([
        b"drwxr-xr-x    2 1001     1001         4096 Nov 30 09:15 dir",
        b"-rw-r--r--    1 1001     1001         1234 Nov 30 09:15   two leading.txt",
        b"-rw-------    1 0        0      1073741824 Jan 05  2023 big.bin",
        b"lrwxrwxrwx    1 0        0               7 Nov 30 09:15 link -> target",
        b"total 8",
    ]) + b"\r\n",
    # MLSD from ProFTPD (odd first byte).
    "proftpd-mlsd": b"\1" + b"\r\n".join([
        b"modify=20261130091500;perm=flcdmpe;type=cdir;unique=801U1;UNIX.mode=0755; .",
        b"modify=20261130091500;perm=adfrw;size=1234;type=file;UNIX.mode=0644; a.txt",
        b"modify=20261130091500;perm=flcdmpe;type=dir;UNIX.mode=0755; sub dir",
        b"type=OS.unix=symlink;size=7; link",
    ]) + b"\r\n",
    "dos-list": b"\0" + b"\r\n".join([
        b"11-30-26  09:15AM       <DIR>          dir",
        b"11-30-26  09:15AM                 1234 a.txt",
    ]) + b"\r\n",
}

for target, seeds in (("sftp_packets", SFTP), ("ftp_listing", LISTING)):
    d = HERE / target
    d.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (d / name).write_bytes(data)
