//! The control connection as a state machine whose states are types: each holds only what is
//! valid in it. It decides the protocol's own rules (TLS before login, `PBSZ`/`PROT P` before
//! data, command order) and hands the rest to the session as [`Action`]s. It never touches a
//! socket, a file or a password check.

use crate::{Command, LineError, ParseError, ProtLevel, Reply};

/// How the listener started the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Explicit FTPS: a cleartext greeting, then `AUTH TLS` before anything else.
    Explicit,
    /// Implicit FTPS: the TLS handshake came first.
    Implicit,
}

/// What the session must do after a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this reply.
    Reply(Reply),
    /// Send `234`, then drop every byte already buffered (cleartext pipelined after `AUTH`
    /// could be a man in the middle's injection) and run the TLS handshake.
    StartTls(Reply),
    /// `USER` named this account: decide whether the TLS client certificate already logs it
    /// in or a password must follow, then call [`Control::identified`].
    Identify { user: String },
    /// Check these credentials, then call [`Control::login_result`]. The password is only
    /// ever handed over here, never logged.
    Authenticate { user: String, password: String },
    /// A command for a logged-in user with the data channel protected; the session
    /// authorizes and runs it.
    Forward(Command),
    /// A transfer (`RETR`, `STOR`, `APPE`, `LIST`, `NLST`, `MLSD`) with the settings in force:
    /// the offset of the `REST` before it (0 without one; the transfer uses it up) and the
    /// representation type.
    Transfer {
        command: Command,
        rest: u64,
        binary: bool,
    },
    /// `RNTO` right after an `RNFR` the session accepted (see [`Control::rename_from`]):
    /// rename `from` (as the session resolved it) to `to` (as the client sent it).
    Rename { from: String, to: String },
    /// Refused before login or TLS, for the audit log: the verb and the reply code sent.
    Refused { verb: &'static str, code: u16 },
    /// Send the reply, then close the connection.
    Close(Reply),
}

/// Whether `USER` alone logged the account in (by its TLS client certificate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identified {
    /// `232`: the certificate is the whole login.
    Complete,
    /// `331`: a password must follow.
    NeedPassword,
}

/// The data channel protection negotiated so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Protection {
    pub pbsz: bool,
    pub private: bool,
}

#[derive(Debug)]
enum State {
    /// Explicit FTPS before `AUTH TLS`: nothing but `AUTH`, `FEAT`, `SYST`, `NOOP`, `HELP`,
    /// `QUIT`.
    Cleartext,
    /// TLS is up; no user yet.
    Secured { prot: Protection },
    /// `USER` was handed to the session; waiting for [`Control::identified`].
    Identifying { prot: Protection, user: String },
    /// `USER` was given; a password must follow.
    User { prot: Protection, user: String },
    /// `PASS` was handed to the session; waiting for [`Control::login_result`].
    Checking { prot: Protection, user: String },
    LoggedIn {
        prot: Protection,
        user: String,
        settings: Settings,
    },
}

/// What a logged-in connection remembers between commands.
#[derive(Debug)]
struct Settings {
    /// `TYPE I` (the default) or `TYPE A`.
    binary: bool,
    /// The offset of a `REST`, for the next transfer.
    rest: u64,
    /// After `EPSV ALL` only `EPSV` may set up a data connection (RFC 2428 §4).
    epsv_all: bool,
    /// The source of an `RNFR` the session accepted; only the very next command may use it.
    rnfr: Option<String>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            binary: true,
            rest: 0,
            epsv_all: false,
            rnfr: None,
        }
    }
}

/// One control connection.
#[derive(Debug)]
pub struct Control {
    state: State,
}

/// Commands that open a data connection or use one.
fn is_data(c: &Command) -> bool {
    matches!(
        c,
        Command::Pasv
            | Command::Epsv { .. }
            | Command::Port(_)
            | Command::Eprt(_)
            | Command::List(_)
            | Command::Nlst(_)
            | Command::Mlsd(_)
            | Command::Retr(_)
            | Command::Stor(_)
            | Command::Stou
            | Command::Appe(_)
    )
}

fn reply(code: u16, text: &str) -> Action {
    Action::Reply(Reply::new(code, text))
}

impl Control {
    pub fn new(start: Start) -> Control {
        Control {
            state: match start {
                Start::Explicit => State::Cleartext,
                Start::Implicit => State::Secured {
                    prot: Protection::default(),
                },
            },
        }
    }

    /// The greeting for a new connection.
    pub fn greeting(&self) -> Reply {
        Reply::new(220, "Portcullis FTPS gateway ready")
    }

    /// Whether the control connection is under TLS.
    pub fn secured(&self) -> bool {
        !matches!(self.state, State::Cleartext)
    }

    /// The logged-in user.
    pub fn user(&self) -> Option<&str> {
        match &self.state {
            State::LoggedIn { user, .. } => Some(user),
            _ => None,
        }
    }

    /// Whether transfers are binary (`TYPE I`, the default) rather than `TYPE A`.
    pub fn binary(&self) -> bool {
        match &self.state {
            State::LoggedIn { settings, .. } => settings.binary,
            _ => true,
        }
    }

    /// The session accepted the `RNFR` it was forwarded (the source exists and is visible):
    /// `from` is the source as the session resolved it. An `RNTO` must come next; any other
    /// command forgets it (RFC 959 §4.1.3).
    pub fn rename_from(&mut self, from: String) -> Reply {
        match &mut self.state {
            State::LoggedIn { settings, .. } => {
                settings.rnfr = Some(from);
                Reply::new(350, "Ready for RNTO")
            }
            _ => Reply::new(503, "Log in first"),
        }
    }

    /// A line that could not be read: the session stays.
    pub fn on_line_error(&mut self, e: LineError) -> Vec<Action> {
        vec![match e {
            LineError::TooLong => reply(500, "Line too long"),
            LineError::Nul => reply(501, "NUL in command"),
        }]
    }

    /// A line that did not parse: the precise code, and the session stays.
    pub fn on_parse_error(&mut self, e: &ParseError) -> Vec<Action> {
        vec![Action::Reply(Reply::new(e.code(), e.message()))]
    }

    /// The TLS handshake after `AUTH TLS` succeeded.
    pub fn tls_established(&mut self) {
        if matches!(self.state, State::Cleartext) {
            self.state = State::Secured {
                prot: Protection::default(),
            };
        }
    }

    /// The answer to [`Action::Identify`].
    pub fn identified(&mut self, outcome: Identified) -> Vec<Action> {
        match std::mem::replace(&mut self.state, State::Cleartext) {
            State::Identifying { prot, user } => match outcome {
                Identified::Complete => {
                    self.state = State::LoggedIn {
                        prot,
                        user,
                        settings: Settings::default(),
                    };
                    vec![reply(
                        232,
                        "Logged in, authorized by the client certificate",
                    )]
                }
                Identified::NeedPassword => {
                    self.state = State::User { prot, user };
                    vec![reply(331, "Password required")]
                }
            },
            other => {
                self.state = other;
                vec![]
            }
        }
    }

    /// The answer to [`Action::Authenticate`].
    pub fn login_result(&mut self, ok: bool) -> Vec<Action> {
        match std::mem::replace(&mut self.state, State::Cleartext) {
            State::Checking { prot, user } if ok => {
                self.state = State::LoggedIn {
                    prot,
                    user,
                    settings: Settings::default(),
                };
                vec![reply(230, "Logged in")]
            }
            State::Checking { prot, .. } => {
                self.state = State::Secured { prot };
                vec![reply(530, "Login incorrect")]
            }
            other => {
                self.state = other;
                vec![]
            }
        }
    }

    /// One parsed command.
    pub fn on_command(&mut self, cmd: Command) -> Vec<Action> {
        use Command::*;
        // An accepted RNFR is good for the very next command only, whatever it is.
        let rnfr = match &mut self.state {
            State::LoggedIn { settings, .. } => settings.rnfr.take(),
            _ => None,
        };
        // Valid in every state.
        match &cmd {
            Quit => return vec![Action::Close(Reply::new(221, "Goodbye"))],
            Noop => return vec![reply(200, "OK")],
            Syst => return vec![reply(215, "UNIX Type: L8")],
            Feat => return vec![Action::Reply(features())],
            Help(_) => return vec![reply(214, "See RFC 959, 2228, 2428, 3659 and 4217")],
            Ccc => {
                // Dropping back to a cleartext control channel is never allowed.
                return vec![
                    reply(533, "CCC is refused: the control channel stays encrypted"),
                    Action::Refused {
                        verb: "CCC",
                        code: 533,
                    },
                ];
            }
            _ => {}
        }
        let state = std::mem::replace(&mut self.state, State::Cleartext);
        let (state, actions) = match state {
            State::Cleartext => match cmd {
                Auth(m) if m == "TLS" || m == "TLS-C" || m == "SSL" => (
                    State::Cleartext,
                    vec![Action::StartTls(Reply::new(
                        234,
                        "Proceed with TLS negotiation",
                    ))],
                ),
                Auth(_) => (
                    State::Cleartext,
                    vec![reply(504, "Only AUTH TLS is supported")],
                ),
                other => {
                    let v = other.verb();
                    (
                        State::Cleartext,
                        vec![
                            reply(530, "Cleartext is not accepted: send AUTH TLS first"),
                            Action::Refused { verb: v, code: 530 },
                        ],
                    )
                }
            },
            State::Secured { prot } => match cmd {
                User(u) => (
                    State::Identifying {
                        prot,
                        user: u.clone(),
                    },
                    vec![Action::Identify { user: u }],
                ),
                Pass(_) => (State::Secured { prot }, vec![reply(503, "Send USER first")]),
                other => {
                    let (prot, a) = protection(prot, other, false);
                    (State::Secured { prot }, a)
                }
            },
            State::User { prot, user } => match cmd {
                Pass(p) => (
                    State::Checking {
                        prot,
                        user: user.clone(),
                    },
                    vec![Action::Authenticate { user, password: p }],
                ),
                User(u) => (
                    State::Identifying {
                        prot,
                        user: u.clone(),
                    },
                    vec![Action::Identify { user: u }],
                ),
                other => {
                    let (prot, a) = protection(prot, other, false);
                    (State::User { prot, user }, a)
                }
            },
            State::Checking { prot, user } => (
                State::Checking { prot, user },
                vec![reply(503, "Login in progress")],
            ),
            State::Identifying { prot, user } => (
                State::Identifying { prot, user },
                vec![reply(503, "Login in progress")],
            ),
            State::LoggedIn {
                mut prot,
                user,
                mut settings,
            } => {
                let actions = match cmd {
                    User(_) | Pass(_) => vec![reply(503, "Already logged in")],
                    other => {
                        let (p, a) = protection(prot, other, true);
                        prot = p;
                        a.into_iter()
                            .flat_map(|a| logged_in(&mut settings, rnfr.clone(), a))
                            .collect()
                    }
                };
                (
                    State::LoggedIn {
                        prot,
                        user,
                        settings,
                    },
                    actions,
                )
            }
        };
        self.state = state;
        actions
    }
}

/// The rules after TLS: `AUTH` again is out of order, `PBSZ 0` then `PROT P` protect the
/// data channel, and no data command runs without them.
fn protection(mut prot: Protection, cmd: Command, logged_in: bool) -> (Protection, Vec<Action>) {
    use Command::*;
    let actions = match cmd {
        Auth(_) => vec![reply(503, "TLS is already established")],
        Pbsz(_) => {
            // Under TLS the only buffer size is 0 (RFC 4217 §9).
            prot.pbsz = true;
            vec![reply(200, "PBSZ=0")]
        }
        Prot(_) if !prot.pbsz => vec![reply(503, "Send PBSZ 0 first")],
        Prot(ProtLevel::Private) => {
            prot.private = true;
            vec![reply(200, "Protection level set to Private")]
        }
        Prot(_) => vec![
            reply(
                534,
                "Only PROT P is allowed: data connections are always encrypted",
            ),
            Action::Refused {
                verb: "PROT",
                code: 534,
            },
        ],
        c if !logged_in => {
            let v = c.verb();
            vec![
                reply(530, "Please log in with USER and PASS"),
                Action::Refused { verb: v, code: 530 },
            ]
        }
        c if is_data(&c) && !(prot.pbsz && prot.private) => {
            let v = c.verb();
            vec![
                reply(
                    521,
                    "Data connections must be protected: send PBSZ 0 and PROT P first",
                ),
                Action::Refused { verb: v, code: 521 },
            ]
        }
        c => vec![Action::Forward(c)],
    };
    (prot, actions)
}

/// The logged-in rules for a command that passed [`protection`]: the settings that shape
/// transfers (`TYPE`, `REST`, `EPSV ALL`) and the `RNFR`/`RNTO` pair are kept here; the rest
/// goes to the session.
fn logged_in(s: &mut Settings, rnfr: Option<String>, action: Action) -> Vec<Action> {
    use Command::*;
    let Action::Forward(cmd) = action else {
        return vec![action];
    };
    match cmd {
        Type { binary } => {
            s.binary = binary;
            vec![reply(
                200,
                if binary {
                    "Type set to I"
                } else {
                    "Type set to A"
                },
            )]
        }
        Rest(n) => {
            s.rest = n;
            vec![Action::Reply(Reply::new(
                350,
                format!("Restarting at {n}; send RETR or STOR"),
            ))]
        }
        Epsv { all: true, .. } => {
            s.epsv_all = true;
            vec![reply(200, "EPSV ALL accepted")]
        }
        Pasv | Port(_) | Eprt(_) if s.epsv_all => {
            vec![reply(503, "EPSV ALL was sent: only EPSV is accepted")]
        }
        Rnto(to) => match rnfr {
            Some(from) => vec![Action::Rename { from, to }],
            None => vec![reply(503, "Send RNFR first")],
        },
        command @ (Retr(_) | Stor(_) | Appe(_) | List(_) | Nlst(_) | Mlsd(_)) => {
            vec![Action::Transfer {
                command,
                rest: std::mem::take(&mut s.rest),
                binary: s.binary,
            }]
        }
        other => vec![Action::Forward(other)],
    }
}

fn features() -> Reply {
    Reply::multi(
        211,
        [
            "Features:",
            "AUTH TLS",
            "PBSZ",
            "PROT",
            "EPSV",
            "EPRT",
            "MDTM",
            "MFMT",
            "SIZE",
            "MLST type*;size*;modify*;",
            "REST STREAM",
            "UTF8",
            "End",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    fn run(c: &mut Control, line: &str) -> Vec<Action> {
        match parse(line) {
            Ok(cmd) => c.on_command(cmd),
            Err(e) => c.on_parse_error(&e),
        }
    }

    fn codes(actions: &[Action]) -> Vec<u16> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Reply(r) | Action::StartTls(r) | Action::Close(r) => Some(r.code),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn no_cleartext_login_ever() {
        let mut c = Control::new(Start::Explicit);
        for line in [
            "USER alice",
            "PASS secret",
            "LIST",
            "PBSZ 0",
            "PROT P",
            "RETR x",
        ] {
            let a = run(&mut c, line);
            assert_eq!(codes(&a), [530], "{line}");
            assert!(
                a.iter()
                    .any(|a| matches!(a, Action::Refused { code: 530, .. }))
            );
            assert!(!a.iter().any(|a| matches!(a, Action::Authenticate { .. })));
        }
        assert!(!c.secured());
    }

    #[test]
    fn explicit_then_login_then_protected_data() {
        let mut c = Control::new(Start::Explicit);
        assert!(matches!(run(&mut c, "AUTH TLS")[..], [Action::StartTls(ref r)] if r.code == 234));
        c.tls_established();
        assert!(c.secured());
        assert_eq!(
            run(&mut c, "USER alice"),
            [Action::Identify {
                user: "alice".into()
            }]
        );
        assert_eq!(codes(&run(&mut c, "PASS early")), [503]);
        assert_eq!(codes(&c.identified(Identified::NeedPassword)), [331]);
        let a = run(&mut c, "PASS s3cret");
        assert_eq!(
            a,
            [Action::Authenticate {
                user: "alice".into(),
                password: "s3cret".into()
            }]
        );
        assert_eq!(codes(&run(&mut c, "NOOP")), [200]);
        assert_eq!(codes(&c.login_result(true)), [230]);
        assert_eq!(c.user(), Some("alice"));
        // Data before PBSZ/PROT: 521; PROT before PBSZ: 503; PROT C: 534.
        assert_eq!(codes(&run(&mut c, "PASV")), [521]);
        assert_eq!(codes(&run(&mut c, "PROT P")), [503]);
        assert_eq!(codes(&run(&mut c, "PBSZ 0")), [200]);
        assert_eq!(codes(&run(&mut c, "PROT C")), [534]);
        assert_eq!(codes(&run(&mut c, "EPSV")), [521]);
        assert_eq!(codes(&run(&mut c, "PROT P")), [200]);
        assert_eq!(
            run(&mut c, "RETR /in/a.txt"),
            [Action::Transfer {
                command: Command::Retr("/in/a.txt".into()),
                rest: 0,
                binary: true
            }]
        );
        // Non-data commands never needed protection.
        assert_eq!(run(&mut c, "PWD"), [Action::Forward(Command::Pwd)]);
    }

    fn logged_in() -> Control {
        let mut c = Control::new(Start::Implicit);
        run(&mut c, "USER alice");
        c.identified(Identified::NeedPassword);
        run(&mut c, "PASS pw");
        c.login_result(true);
        run(&mut c, "PBSZ 0");
        run(&mut c, "PROT P");
        c
    }

    fn transfer(a: &[Action]) -> (u64, bool) {
        match a {
            [Action::Transfer { rest, binary, .. }] => (*rest, *binary),
            other => panic!("not a transfer: {other:?}"),
        }
    }

    #[test]
    fn rest_and_type_shape_the_next_transfer_only() {
        let mut c = logged_in();
        assert_eq!(transfer(&run(&mut c, "RETR a")), (0, true));
        assert_eq!(codes(&run(&mut c, "REST 100")), [350]);
        // Commands between REST and the transfer (EPSV, TYPE) keep the offset.
        assert!(matches!(
            run(&mut c, "EPSV")[..],
            [Action::Forward(Command::Epsv { .. })]
        ));
        assert_eq!(codes(&run(&mut c, "TYPE A")), [200]);
        assert!(!c.binary());
        assert_eq!(transfer(&run(&mut c, "STOR a")), (100, false));
        // Used up by that transfer.
        assert_eq!(transfer(&run(&mut c, "RETR a")), (0, false));
        run(&mut c, "TYPE I");
        assert_eq!(transfer(&run(&mut c, "LIST")), (0, true));
    }

    #[test]
    fn rnto_must_follow_an_accepted_rnfr_at_once() {
        let mut c = logged_in();
        assert_eq!(codes(&run(&mut c, "RNTO b")), [503]);
        // RNFR goes to the session, which checks the source and then accepts it.
        assert_eq!(
            run(&mut c, "RNFR a"),
            [Action::Forward(Command::Rnfr("a".into()))]
        );
        assert_eq!(c.rename_from("/in/a".into()).code, 350);
        assert_eq!(
            run(&mut c, "RNTO b"),
            [Action::Rename {
                from: "/in/a".into(),
                to: "b".into()
            }]
        );
        // Used once.
        assert_eq!(codes(&run(&mut c, "RNTO c")), [503]);
        // Anything in between forgets the source.
        run(&mut c, "RNFR a");
        c.rename_from("/in/a".into());
        assert_eq!(codes(&run(&mut c, "NOOP")), [200]);
        assert_eq!(codes(&run(&mut c, "RNTO b")), [503]);
        run(&mut c, "RNFR a");
        c.rename_from("/in/a".into());
        run(&mut c, "PWD");
        assert_eq!(codes(&run(&mut c, "RNTO b")), [503]);
    }

    #[test]
    fn after_epsv_all_only_epsv_sets_up_data() {
        let mut c = logged_in();
        assert!(matches!(
            run(&mut c, "PASV")[..],
            [Action::Forward(Command::Pasv)]
        ));
        assert_eq!(codes(&run(&mut c, "EPSV ALL")), [200]);
        assert_eq!(codes(&run(&mut c, "PASV")), [503]);
        assert_eq!(codes(&run(&mut c, "PORT 127,0,0,1,4,1")), [503]);
        assert_eq!(codes(&run(&mut c, "EPRT |1|127.0.0.1|1025|")), [503]);
        assert!(matches!(
            run(&mut c, "EPSV")[..],
            [Action::Forward(Command::Epsv { .. })]
        ));
    }

    #[test]
    fn implicit_starts_secured_and_a_failed_login_can_retry() {
        let mut c = Control::new(Start::Implicit);
        assert!(c.secured());
        assert_eq!(codes(&run(&mut c, "PASS x")), [503]);
        run(&mut c, "USER bob");
        c.identified(Identified::NeedPassword);
        run(&mut c, "PASS wrong");
        assert_eq!(codes(&c.login_result(false)), [530]);
        assert_eq!(c.user(), None);
        assert_eq!(codes(&run(&mut c, "LIST")), [530]);
        run(&mut c, "USER bob");
        c.identified(Identified::NeedPassword);
        run(&mut c, "PASS right");
        assert_eq!(codes(&c.login_result(true)), [230]);
    }

    #[test]
    fn a_certificate_alone_can_log_in() {
        let mut c = Control::new(Start::Implicit);
        run(&mut c, "USER carol");
        assert_eq!(codes(&c.identified(Identified::Complete)), [232]);
        assert_eq!(c.user(), Some("carol"));
        assert_eq!(codes(&run(&mut c, "PASS x")), [503]);
    }

    #[test]
    fn ccc_is_refused_everywhere_and_the_session_stays() {
        for start in [Start::Explicit, Start::Implicit] {
            let mut c = Control::new(start);
            assert_eq!(codes(&run(&mut c, "CCC")), [533]);
            assert_eq!(codes(&run(&mut c, "NOOP")), [200]);
        }
    }

    #[test]
    fn malformed_commands_get_a_code_and_the_session_stays() {
        let mut c = Control::new(Start::Implicit);
        assert_eq!(codes(&run(&mut c, "FROB")), [500]);
        assert_eq!(codes(&run(&mut c, "PORT 1,2")), [501]);
        assert_eq!(codes(&c.on_line_error(LineError::TooLong)), [500]);
        assert_eq!(codes(&run(&mut c, "QUIT")), [221]);
    }
}
