//! The logged-in FTP commands that touch files: each becomes a `FileOp` for
//! `Session::execute`, and its result an FTP reply.

use std::sync::Arc;

use portcullis_ftp_proto::{Command, Entry, Reply, mlsd_line, timeval};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    fs::{FileAttrs, FileOp, FsError, OpOutput},
    session::Session,
};

use super::{Conn, Flow, wire::Wire};

impl Conn {
    /// A directory's entries as listing facts.
    pub(super) async fn list(&self, path: &str) -> Result<Vec<Entry>, FsError> {
        let session = self.session();
        let handle = match session
            .execute(FileOp::OpenDir {
                path: path.to_owned(),
            })
            .await?
        {
            OpOutput::Handle(h) => h,
            _ => return Err(FsError::Failure("unexpected answer".into())),
        };
        let mut out = Vec::new();
        loop {
            match session.execute(FileOp::ReadDir { handle }).await {
                Ok(OpOutput::Entries(es)) => {
                    out.extend(es.iter().map(|e| entry(&e.name, &e.attrs)))
                }
                Ok(_) => break,
                Err(e) => {
                    let _ = session.execute(FileOp::Close { handle }).await;
                    return Err(e);
                }
            }
        }
        let _ = session.execute(FileOp::Close { handle }).await;
        Ok(out)
    }

    pub(super) fn session(&self) -> Arc<Session> {
        self.session
            .clone()
            .expect("the control machine forwards only after login")
    }

    /// A path from the client, absolute, with `.` and `..` resolved against the cwd.
    pub(super) fn resolve(&self, arg: &str) -> String {
        crate::policy::join(&self.cwd, arg)
    }

    pub(super) async fn stat(&self, path: &str) -> Result<FileAttrs, FsError> {
        match self
            .session()
            .execute(FileOp::Stat {
                path: path.to_owned(),
                follow: true,
            })
            .await?
        {
            OpOutput::Attrs(a) => Ok(a),
            _ => Err(FsError::Failure("unexpected answer".into())),
        }
    }

    /// A logged-in, protected command: everything that touches files goes to the session.
    pub(super) async fn forward<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        cmd: Command,
        wire: &mut Wire<S>,
    ) -> Flow {
        use Command::*;
        let r = match cmd {
            Pwd => Reply::new(
                257,
                format!("{} is the current directory", quote(&self.cwd)),
            ),
            Cwd(p) => self.cwd_to(&p).await,
            Cdup => self.cwd_to("..").await,
            Mode(c) if c.eq_ignore_ascii_case(&'S') => Reply::new(200, "Mode set to S"),
            Mode(_) => Reply::new(504, "Only MODE S is supported"),
            Stru(c) if c.eq_ignore_ascii_case(&'F') => Reply::new(200, "Structure set to F"),
            Stru(_) => Reply::new(504, "Only STRU F is supported"),
            Allo => Reply::new(202, "No storage allocation necessary"),
            Acct(_) => Reply::new(202, "No account necessary"),
            Rein => Reply::new(502, "REIN is not implemented"),
            Stou => Reply::new(502, "STOU is not implemented: name the file with STOR"),
            Opts(o) if o.to_ascii_uppercase().starts_with("UTF8") => {
                Reply::new(200, "UTF-8 is always on")
            }
            Opts(_) => Reply::new(501, "Unknown option"),
            Pasv => self.passive(false),
            Epsv {
                protocol: Some(p), ..
            } if p != 1 && p != 2 => Reply::new(522, "Network protocol not supported, use (1,2)"),
            Epsv { .. } => self.passive(true),
            Port(hp) | Eprt(hp) => self.active(hp).await,
            Size(p) => match self.stat(&self.resolve(&p)).await {
                Ok(a) if a.is_dir() => Reply::new(550, "Not a plain file"),
                Ok(a) => Reply::new(213, a.size.unwrap_or(0).to_string()),
                Err(e) => fs_reply(&e),
            },
            Mdtm(p) => match self.stat(&self.resolve(&p)).await {
                Ok(a) => Reply::new(213, timeval(i64::from(a.mtime.unwrap_or(0)))),
                Err(e) => fs_reply(&e),
            },
            Mfmt(t, p) => {
                let path = self.resolve(&p);
                match u32::try_from(t) {
                    Err(_) => Reply::new(501, "Time out of range"),
                    Ok(mtime) => {
                        let op = FileOp::SetStat {
                            path,
                            attrs: FileAttrs {
                                mtime: Some(mtime),
                                ..Default::default()
                            },
                        };
                        match self.session().execute(op).await {
                            Ok(_) => Reply::new(213, format!("Modify={}; {p}", timeval(t))),
                            Err(e) => fs_reply(&e),
                        }
                    }
                }
            }
            Mlst(p) => {
                let path = self.resolve(p.as_deref().unwrap_or(""));
                match self.stat(&path).await {
                    Ok(a) => match mlsd_line(&entry(&path, &a)) {
                        Some(facts) => {
                            Reply::multi(250, vec![format!("Listing {path}"), facts, "End".into()])
                        }
                        None => Reply::new(550, "Name not representable"),
                    },
                    Err(e) => fs_reply(&e),
                }
            }
            Dele(p) => {
                self.simple(
                    FileOp::Remove {
                        path: self.resolve(&p),
                    },
                    250,
                    "File deleted",
                )
                .await
            }
            Mkd(p) => {
                let path = self.resolve(&p);
                let r = self
                    .simple(
                        FileOp::Mkdir {
                            path: path.clone(),
                            attrs: FileAttrs::default(),
                        },
                        257,
                        "",
                    )
                    .await;
                if r.code == 257 {
                    Reply::new(257, format!("{} created", quote(&path)))
                } else {
                    r
                }
            }
            Rmd(p) => {
                self.simple(
                    FileOp::Rmdir {
                        path: self.resolve(&p),
                    },
                    250,
                    "Directory removed",
                )
                .await
            }
            Rnfr(p) => {
                let path = self.resolve(&p);
                match self.stat(&path).await {
                    Ok(_) => self.control.rename_from(path),
                    Err(e) => fs_reply(&e),
                }
            }
            Site(s) if s.trim().eq_ignore_ascii_case("HELP") => Reply::new(
                214,
                "SITE subcommands are passed to the endpoint where a role allows them",
            ),
            Site(s) => match crate::session::site_chmod(s.trim()) {
                // A mode change like SETSTAT's on every backend: the verb `setattr`, the
                // mount's umask, confinement and audit all come from `Session::execute`.
                Some(Err(why)) => Reply::new(501, why),
                Some(Ok((_, mode))) if mode & !0o777 != 0 => Reply::new(
                    550,
                    "SITE refused: setuid, setgid and sticky bits are never honoured",
                ),
                Some(Ok((path, mode))) => {
                    let attrs = FileAttrs {
                        mode: Some(mode),
                        ..Default::default()
                    };
                    let op = FileOp::SetStat {
                        path: self.resolve(path),
                        attrs,
                    };
                    self.simple(op, 200, "SITE CHMOD command successful").await
                }
                None => match self
                    .session()
                    .execute(FileOp::Site {
                        cwd: self.cwd.clone(),
                        command: s.trim().to_owned(),
                    })
                    .await
                {
                    Ok(OpOutput::SiteReply { code, text }) if (200..600).contains(&code) => {
                        Reply::new(code, text)
                    }
                    Ok(OpOutput::SiteReply { code, .. }) => {
                        Reply::new(451, format!("The endpoint answered {code}"))
                    }
                    Ok(other) => Reply::new(451, format!("unexpected result {other:?}")),
                    Err(FsError::Denied(why)) => Reply::new(550, format!("SITE refused: {why}")),
                    Err(FsError::Unsupported(why)) => Reply::new(504, why),
                    Err(e) => fs_reply(&e),
                },
            },
            Stat(None) => Reply::multi(
                211,
                vec![
                    "Portcullis FTPS gateway status:".into(),
                    format!("Connected from {}", self.peer.ip()),
                    format!("Logged in as {}", self.attempt.user),
                    format!(
                        "TYPE: {}",
                        if self.control.binary() {
                            "BINARY"
                        } else {
                            "ASCII"
                        }
                    ),
                    format!(
                        "Control and data protected by {}",
                        self.channel.as_deref().unwrap_or("TLS")
                    ),
                    "End of status".into(),
                ],
            ),
            Stat(Some(_)) => Reply::new(502, "STAT with a path is not implemented: use MLST"),
            Abor => Reply::new(226, "No transfer to abort"),
            // TYPE, REST, EPSV ALL, RNTO and the transfers come as their own actions.
            other => Reply::new(502, format!("{} is not implemented", other.verb())),
        };
        match self.reply(wire, r).await {
            Ok(()) => Flow::Continue,
            Err(()) => Flow::End("client closed"),
        }
    }

    /// `RNTO` after an accepted `RNFR`: replaces an existing name, as on the FTP servers
    /// users know.
    pub(super) async fn rename(&self, from: String, to: &str) -> Reply {
        let op = FileOp::Rename {
            from,
            to: self.resolve(to),
            overwrite: true,
        };
        self.simple(op, 250, "Renamed").await
    }

    pub(super) async fn simple(&self, op: FileOp, code: u16, text: &str) -> Reply {
        match self.session().execute(op).await {
            Ok(_) => Reply::new(code, text),
            Err(e) => fs_reply(&e),
        }
    }

    pub(super) async fn cwd_to(&mut self, arg: &str) -> Reply {
        let path = self.resolve(arg);
        match self.stat(&path).await {
            Ok(a) if a.is_dir() => {
                self.session().prepare(&path).await;
                self.cwd = path;
                Reply::new(250, format!("Directory changed to {}", self.cwd))
            }
            Ok(_) => Reply::new(550, "Not a directory"),
            Err(e) => fs_reply(&e),
        }
    }
}

pub(super) fn quote(path: &str) -> String {
    format!("\"{}\"", path.replace('"', "\"\""))
}

/// Listing facts for `name` (an entry's name, or the full path for `MLST`).
pub(crate) fn entry(name: &str, a: &FileAttrs) -> Entry {
    Entry {
        name: name.to_owned(),
        dir: a.is_dir(),
        size: a.size.unwrap_or(0),
        mtime: i64::from(a.mtime.unwrap_or(0)),
        perms: a.mode.map(|m| m & 0o777),
    }
}

/// A backend error as an FTP reply.
pub(super) fn fs_reply(e: &FsError) -> Reply {
    match e {
        FsError::NotFound => Reply::new(550, "No such file or directory"),
        FsError::Denied(why) => Reply::new(550, format!("Permission denied: {why}")),
        FsError::AlreadyExists => Reply::new(550, "File exists"),
        FsError::BadPath(why) => Reply::new(553, format!("File name not allowed: {why}")),
        FsError::Unsupported(why) => Reply::new(504, why.clone()),
        FsError::Unavailable(why) => Reply::new(451, format!("Endpoint unavailable: {why}")),
        FsError::Quota(why) => Reply::new(552, format!("Exceeded storage allocation: {why}")),
        FsError::BadHandle | FsError::Failure(_) => {
            Reply::new(451, format!("Local error in processing: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pwd_quotes_are_doubled() {
        assert_eq!(quote("/a\"b"), "\"/a\"\"b\"");
    }
}
