//! SFTP wire attributes ⇄ the gateway's protocol-neutral `FileAttrs`, shared by the SFTP front
//! end and the SFTP backend so that the mapping exists once.

use russh_sftp::protocol::FileAttributes;

use crate::fs::FileAttrs;

pub fn from_wire(a: &FileAttributes) -> FileAttrs {
    FileAttrs {
        size: a.size,
        uid: a.uid,
        gid: a.gid,
        mode: a.permissions,
        atime: a.atime,
        mtime: a.mtime,
    }
}

pub fn to_wire(a: &FileAttrs) -> FileAttributes {
    FileAttributes {
        size: a.size,
        uid: a.uid,
        gid: a.gid,
        permissions: a.mode,
        atime: a.atime,
        mtime: a.mtime,
        ..FileAttributes::empty()
    }
}
