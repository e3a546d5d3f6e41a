mod attrs;
mod close;
mod data;
mod extended;
mod file;
mod file_attrs;
mod fsetstat;
mod fstat;
mod handle;
mod init;
mod lstat;
mod mkdir;
mod name;
mod open;
mod opendir;
mod read;
mod readdir;
mod readlink;
mod realpath;
mod remove;
mod rename;
mod rmdir;
mod setstat;
mod stat;
mod status;
mod symlink;
mod version;
mod write;

use bytes::{Buf, Bytes};

use crate::{de, error::Error, ser};

pub(crate) use self::write::WriteRef;
pub use self::{
    attrs::Attrs,
    close::Close,
    data::Data,
    extended::{Extended, ExtendedReply},
    file::File,
    file_attrs::{
        FileAttr, FileAttributes, FileMode, FilePermissionFlags, FilePermissions, FileType,
    },
    fsetstat::FSetStat,
    fstat::Fstat,
    handle::Handle,
    init::Init,
    lstat::Lstat,
    mkdir::MkDir,
    name::Name,
    open::{Open, OpenFlags},
    opendir::OpenDir,
    read::Read,
    readdir::ReadDir,
    readlink::ReadLink,
    realpath::RealPath,
    remove::Remove,
    rename::Rename,
    rmdir::RmDir,
    setstat::SetStat,
    stat::Stat,
    status::{Status, StatusCode},
    symlink::Symlink,
    version::Version,
    write::Write,
};

pub const VERSION: u32 = 3;

const SSH_FXP_INIT: u8 = 1;
const SSH_FXP_VERSION: u8 = 2;
const SSH_FXP_OPEN: u8 = 3;
const SSH_FXP_CLOSE: u8 = 4;
const SSH_FXP_READ: u8 = 5;
const SSH_FXP_WRITE: u8 = 6;
const SSH_FXP_LSTAT: u8 = 7;
const SSH_FXP_FSTAT: u8 = 8;
const SSH_FXP_SETSTAT: u8 = 9;
const SSH_FXP_FSETSTAT: u8 = 10;
const SSH_FXP_OPENDIR: u8 = 11;
const SSH_FXP_READDIR: u8 = 12;
const SSH_FXP_REMOVE: u8 = 13;
const SSH_FXP_MKDIR: u8 = 14;
const SSH_FXP_RMDIR: u8 = 15;
const SSH_FXP_REALPATH: u8 = 16;
const SSH_FXP_STAT: u8 = 17;
const SSH_FXP_RENAME: u8 = 18;
const SSH_FXP_READLINK: u8 = 19;
const SSH_FXP_SYMLINK: u8 = 20;

const SSH_FXP_STATUS: u8 = 101;
const SSH_FXP_HANDLE: u8 = 102;
const SSH_FXP_DATA: u8 = 103;
const SSH_FXP_NAME: u8 = 104;
const SSH_FXP_ATTRS: u8 = 105;

const SSH_FXP_EXTENDED: u8 = 200;
const SSH_FXP_EXTENDED_REPLY: u8 = 201;

pub(crate) trait RequestId: Sized {
    fn get_request_id(&self) -> u32;
}

macro_rules! impl_request_id {
    ($packet:ty) => {
        impl RequestId for $packet {
            fn get_request_id(&self) -> u32 {
                self.id
            }
        }
    };
}

macro_rules! impl_packet_for {
    ($name:ident) => {
        impl From<$name> for Packet {
            fn from(input: $name) -> Self {
                Self::$name(input)
            }
        }
    };
}

pub(crate) use impl_packet_for;
pub(crate) use impl_request_id;

#[derive(Debug)]
pub enum Packet {
    Init(Init),
    Version(Version),
    Open(Open),
    Close(Close),
    Read(Read),
    Write(Write),
    Lstat(Lstat),
    Fstat(Fstat),
    SetStat(SetStat),
    FSetStat(FSetStat),
    OpenDir(OpenDir),
    ReadDir(ReadDir),
    Remove(Remove),
    MkDir(MkDir),
    RmDir(RmDir),
    RealPath(RealPath),
    Stat(Stat),
    Rename(Rename),
    ReadLink(ReadLink),
    Symlink(Symlink),
    Status(Status),
    Handle(Handle),
    Data(Data),
    Name(Name),
    Attrs(Attrs),
    Extended(Extended),
    ExtendedReply(ExtendedReply),
}

impl Packet {
    pub fn get_request_id(&self) -> u32 {
        match self {
            Self::Open(open) => open.get_request_id(),
            Self::Close(close) => close.get_request_id(),
            Self::Read(read) => read.get_request_id(),
            Self::Write(write) => write.get_request_id(),
            Self::Lstat(lstat) => lstat.get_request_id(),
            Self::Fstat(fstat) => fstat.get_request_id(),
            Self::SetStat(setstat) => setstat.get_request_id(),
            Self::FSetStat(fsetstat) => fsetstat.get_request_id(),
            Self::OpenDir(opendir) => opendir.get_request_id(),
            Self::ReadDir(readdir) => readdir.get_request_id(),
            Self::Remove(remove) => remove.get_request_id(),
            Self::MkDir(mkdir) => mkdir.get_request_id(),
            Self::RmDir(rmdir) => rmdir.get_request_id(),
            Self::RealPath(realpath) => realpath.get_request_id(),
            Self::Stat(stat) => stat.get_request_id(),
            Self::Rename(rename) => rename.get_request_id(),
            Self::ReadLink(readlink) => readlink.get_request_id(),
            Self::Symlink(symlink) => symlink.get_request_id(),
            Self::Extended(extended) => extended.get_request_id(),
            _ => 0,
        }
    }

    pub fn status(id: u32, status_code: StatusCode, msg: &str, tag: &str) -> Self {
        Packet::Status(Status {
            id,
            status_code,
            error_message: msg.to_string(),
            language_tag: tag.to_string(),
        })
    }

    pub fn error(id: u32, status_code: StatusCode) -> Self {
        Self::status(id, status_code, &status_code.to_string(), "en-US")
    }
}

/// PORTCULLIS PATCH: WRITE and DATA payloads (`string` on the wire) as `Bytes`.
pub(crate) mod payload {
    use bytes::{Buf, Bytes};
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::error::Error;

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        serde_bytes::ByteBuf::deserialize(d).map(|b| Bytes::from(b.into_vec()))
    }

    /// A length-prefixed payload, as a slice of `bytes`.
    pub fn take(bytes: &mut Bytes) -> Result<Bytes, Error> {
        let len = bytes.try_get_u32()? as usize;
        if bytes.remaining() < len {
            return Err(Error::BadMessage("payload longer than its packet".to_owned()));
        }
        Ok(bytes.split_to(len))
    }
}

impl TryFrom<&mut Bytes> for Packet {
    type Error = Error;

    /// Decodes type and payload after the stream reader has consumed the length.
    fn try_from(bytes: &mut Bytes) -> Result<Self, Self::Error> {
        let r#type = bytes.try_get_u8()?;
        debug!("packet type {}", r#type);

        let request = match r#type {
            SSH_FXP_INIT => Self::Init(de::from_bytes(bytes)?),
            SSH_FXP_VERSION => Self::Version(de::from_bytes(bytes)?),
            SSH_FXP_OPEN => Self::Open(de::from_bytes(bytes)?),
            SSH_FXP_CLOSE => Self::Close(de::from_bytes(bytes)?),
            SSH_FXP_READ => Self::Read(de::from_bytes(bytes)?),
            // PORTCULLIS PATCH: WRITE and DATA payloads are slices of the packet, not copies.
            SSH_FXP_WRITE => {
                let h: write::WriteHeader = de::from_bytes(bytes)?;
                Self::Write(Write {
                    id: h.id,
                    handle: h.handle,
                    offset: h.offset,
                    data: payload::take(bytes)?,
                })
            }
            SSH_FXP_LSTAT => Self::Lstat(de::from_bytes(bytes)?),
            SSH_FXP_FSTAT => Self::Fstat(de::from_bytes(bytes)?),
            SSH_FXP_SETSTAT => Self::SetStat(de::from_bytes(bytes)?),
            SSH_FXP_FSETSTAT => Self::FSetStat(de::from_bytes(bytes)?),
            SSH_FXP_OPENDIR => Self::OpenDir(de::from_bytes(bytes)?),
            SSH_FXP_READDIR => Self::ReadDir(de::from_bytes(bytes)?),
            SSH_FXP_REMOVE => Self::Remove(de::from_bytes(bytes)?),
            SSH_FXP_MKDIR => Self::MkDir(de::from_bytes(bytes)?),
            SSH_FXP_RMDIR => Self::RmDir(de::from_bytes(bytes)?),
            SSH_FXP_REALPATH => Self::RealPath(de::from_bytes(bytes)?),
            SSH_FXP_STAT => Self::Stat(de::from_bytes(bytes)?),
            SSH_FXP_RENAME => Self::Rename(de::from_bytes(bytes)?),
            SSH_FXP_READLINK => Self::ReadLink(de::from_bytes(bytes)?),
            SSH_FXP_SYMLINK => Self::Symlink(de::from_bytes(bytes)?),
            SSH_FXP_STATUS => Self::Status(de::from_bytes(bytes)?),
            SSH_FXP_HANDLE => Self::Handle(de::from_bytes(bytes)?),
            SSH_FXP_DATA => Self::Data(Data {
                id: bytes.try_get_u32()?,
                data: payload::take(bytes)?,
            }),
            SSH_FXP_NAME => Self::Name(de::from_bytes(bytes)?),
            SSH_FXP_ATTRS => Self::Attrs(de::from_bytes(bytes)?),
            SSH_FXP_EXTENDED => Self::Extended(de::from_bytes(bytes)?),
            SSH_FXP_EXTENDED_REPLY => Self::ExtendedReply(de::from_bytes(bytes)?),
            _ => return Err(Error::BadMessage("unknown type".to_owned())),
        };

        Ok(request)
    }
}

impl TryFrom<Packet> for Bytes {
    type Error = Error;

    /// Encodes length, type and payload into a single buffer.
    fn try_from(packet: Packet) -> Result<Self, Self::Error> {
        match packet {
            Packet::Init(packet) => ser::to_packet_bytes(SSH_FXP_INIT, &packet),
            Packet::Version(packet) => ser::to_packet_bytes(SSH_FXP_VERSION, &packet),
            Packet::Open(packet) => ser::to_packet_bytes(SSH_FXP_OPEN, &packet),
            Packet::Close(packet) => ser::to_packet_bytes(SSH_FXP_CLOSE, &packet),
            Packet::Read(packet) => ser::to_packet_bytes(SSH_FXP_READ, &packet),
            Packet::Write(packet) => ser::to_packet_bytes(SSH_FXP_WRITE, &packet),
            Packet::Lstat(packet) => ser::to_packet_bytes(SSH_FXP_LSTAT, &packet),
            Packet::Fstat(packet) => ser::to_packet_bytes(SSH_FXP_FSTAT, &packet),
            Packet::SetStat(packet) => ser::to_packet_bytes(SSH_FXP_SETSTAT, &packet),
            Packet::FSetStat(packet) => ser::to_packet_bytes(SSH_FXP_FSETSTAT, &packet),
            Packet::OpenDir(packet) => ser::to_packet_bytes(SSH_FXP_OPENDIR, &packet),
            Packet::ReadDir(packet) => ser::to_packet_bytes(SSH_FXP_READDIR, &packet),
            Packet::Remove(packet) => ser::to_packet_bytes(SSH_FXP_REMOVE, &packet),
            Packet::MkDir(packet) => ser::to_packet_bytes(SSH_FXP_MKDIR, &packet),
            Packet::RmDir(packet) => ser::to_packet_bytes(SSH_FXP_RMDIR, &packet),
            Packet::RealPath(packet) => ser::to_packet_bytes(SSH_FXP_REALPATH, &packet),
            Packet::Stat(packet) => ser::to_packet_bytes(SSH_FXP_STAT, &packet),
            Packet::Rename(packet) => ser::to_packet_bytes(SSH_FXP_RENAME, &packet),
            Packet::ReadLink(packet) => ser::to_packet_bytes(SSH_FXP_READLINK, &packet),
            Packet::Symlink(packet) => ser::to_packet_bytes(SSH_FXP_SYMLINK, &packet),
            Packet::Status(packet) => ser::to_packet_bytes(SSH_FXP_STATUS, &packet),
            Packet::Handle(packet) => ser::to_packet_bytes(SSH_FXP_HANDLE, &packet),
            Packet::Data(packet) => ser::to_packet_bytes(SSH_FXP_DATA, &packet),
            Packet::Name(packet) => ser::to_packet_bytes(SSH_FXP_NAME, &packet),
            Packet::Attrs(packet) => ser::to_packet_bytes(SSH_FXP_ATTRS, &packet),
            Packet::Extended(packet) => ser::to_packet_bytes(SSH_FXP_EXTENDED, &packet),
            Packet::ExtendedReply(packet) => ser::to_packet_bytes(SSH_FXP_EXTENDED_REPLY, &packet),
        }
    }
}
