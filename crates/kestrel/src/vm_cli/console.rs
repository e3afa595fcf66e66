//! `kestrel vm console NAME`: a viewer of a VM's serial console over the daemon's WebSocket.
//! What the guest prints goes to stdout; what is typed goes to the guest; Ctrl-] detaches. On a
//! terminal, the terminal is raw while attached (every exit path puts it back: the guard's drop,
//! and the panic hook in `main`).

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::vm_path;
use crate::manager_client::{Client, ClientError};

/// Console log bytes shown on attach unless `--scrollback` says otherwise.
pub const DEFAULT_SCROLLBACK: u64 = 16 << 10;
/// Ctrl-], the detach key (as virsh's).
const DETACH: u8 = 0x1d;
/// With stdin not a terminal: after its end, how long the output may be quiet before the viewer
/// leaves.
const QUIET_AFTER_INPUT: Duration = Duration::from_secs(2);

/// Why the console ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the console connection failed: {0}")]
    Connection(String),
    #[error("the daemon ended the console connection (was it stopped?); the VM is not affected")]
    DaemonGone,
    #[error("cannot put the terminal in raw mode: {0}")]
    Terminal(std::io::Error),
}

/// What the stdin reader thread hands over.
enum Input {
    Bytes(Vec<u8>),
    /// Ctrl-] was typed.
    Detach,
    /// stdin ended.
    End,
}

/// Attaches to VM `vm`'s console until detach, the VM's end, or (stdin not a terminal) quiet
/// output after the input ended.
pub fn attach(client: &Client, vm: &str, scrollback: u64) -> Result<(), ConsoleError> {
    let terminal = std::io::stdin().is_terminal();
    let path = vm_path(vm, &format!("/console?scrollback={scrollback}"));
    let socket = client.runtime().block_on(client.websocket(&path))?;
    if terminal {
        let _ = writeln!(std::io::stderr(), "Connected to the console of {vm}; press Ctrl-] to detach.\r");
    }
    let raw = vmm::console::RawTerminal::enter().map_err(ConsoleError::Terminal)?;
    let (input_tx, input_rx) = mpsc::channel(16);
    // A plain thread, not tokio's stdin: a blocked read must not keep the runtime from ending.
    std::thread::Builder::new()
        .name("console-stdin".into())
        .spawn(move || read_stdin(input_tx))
        .map_err(|e| ConsoleError::Connection(e.to_string()))?;
    let outcome = client.runtime().block_on(relay(socket, input_rx));
    drop(raw);
    if terminal {
        let _ = writeln!(std::io::stderr(), "\nDetached from the console of {vm}.");
    }
    outcome
}

fn read_stdin(sender: mpsc::Sender<Input>) {
    let mut stdin = std::io::stdin().lock();
    let mut buffer = [0u8; 4096];
    loop {
        let n = match stdin.read(&mut buffer) {
            Ok(0) | Err(_) => {
                let _ = sender.blocking_send(Input::End);
                return;
            }
            Ok(n) => n,
        };
        let chunk = &buffer[..n];
        if let Some(at) = chunk.iter().position(|&b| b == DETACH) {
            if at > 0 {
                let _ = sender.blocking_send(Input::Bytes(chunk[..at].to_vec()));
            }
            let _ = sender.blocking_send(Input::Detach);
            return;
        }
        if sender.blocking_send(Input::Bytes(chunk.to_vec())).is_err() {
            return;
        }
    }
}

async fn relay(
    socket: tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>,
    mut input: mpsc::Receiver<Input>,
) -> Result<(), ConsoleError> {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut sink, mut stream) = socket.split();
    let mut stdout = std::io::stdout();
    let mut input_open = true;
    let failed = |e: tokio_tungstenite::tungstenite::Error| {
        use tokio_tungstenite::tungstenite::error::{Error, ProtocolError};
        match e {
            Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)
            | Error::ConnectionClosed
            | Error::AlreadyClosed
            | Error::Io(_) => ConsoleError::DaemonGone,
            other => ConsoleError::Connection(other.to_string()),
        }
    };
    // SIGTERM/SIGHUP end the viewer the ordinary way, so the terminal is put back.
    let mut term = signal(SignalKind::terminate()).map_err(|e| ConsoleError::Connection(e.to_string()))?;
    let mut hangup = signal(SignalKind::hangup()).map_err(|e| ConsoleError::Connection(e.to_string()))?;
    loop {
        let quiet = async {
            if input_open {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep(QUIET_AFTER_INPUT).await
            }
        };
        tokio::select! {
            message = stream.next() => match message {
                Some(Ok(Message::Binary(bytes))) => write_out(&mut stdout, &bytes),
                Some(Ok(Message::Text(text))) => write_out(&mut stdout, text.as_bytes()),
                Some(Ok(Message::Close(frame))) => {
                    if let Some(frame) = frame.filter(|f| !f.reason.is_empty()) {
                        let _ = writeln!(std::io::stderr(), "\r\n{}\r", frame.reason);
                    }
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(failed(e)),
                None => break,
            },
            typed = input.recv(), if input_open => match typed {
                Some(Input::Bytes(bytes)) => sink.send(Message::Binary(bytes.into())).await.map_err(failed)?,
                Some(Input::Detach) => break,
                Some(Input::End) | None => input_open = false,
            },
            () = quiet => break,
            _ = term.recv() => break,
            _ = hangup.recv() => break,
        }
    }
    let _ = sink.send(Message::Close(None)).await;
    Ok(())
}

/// Console output to stdout at once (a closed stdout is not an error: the viewer just stops
/// showing).
fn write_out(stdout: &mut std::io::Stdout, bytes: &[u8]) {
    let mut out = stdout.lock();
    let _ = out.write_all(bytes).and_then(|()| out.flush());
}
