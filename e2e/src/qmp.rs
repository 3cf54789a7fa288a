//! QEMU's monitor protocol, as far as the suite needs it: a screendump.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// Why a screendump was not taken; `gone` when QEMU is not there any more (its socket vanished
/// or refuses), which ends a wait for a picture early.
#[derive(Debug)]
pub struct QmpError {
    pub text: String,
    pub gone: bool,
}

/// Asks the QEMU behind `socket` to write a screendump to `file` (a path QEMU can write: it runs
/// in the testbed root, where the project and the testbed dir have their own paths), in
/// `format` ("ppm", "png") or QEMU's default (PPM).
pub fn screendump(socket: &Path, file: &Path, format: Option<&str>) -> Result<(), QmpError> {
    let fail = |text: String| QmpError { text, gone: false };
    let stream = UnixStream::connect(socket).map_err(|e| QmpError {
        gone: matches!(
            e.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        ),
        text: format!("{}: {e}", socket.display()),
    })?;
    let timeout = Some(Duration::from_secs(30));
    stream
        .set_read_timeout(timeout)
        .and_then(|_| stream.set_write_timeout(timeout))
        .map_err(|e| fail(format!("QMP socket: {e}")))?;
    let mut writer = stream
        .try_clone()
        .map_err(|e| fail(format!("QMP socket: {e}")))?;
    let mut reader = BufReader::new(stream);
    let greeting = read_message(&mut reader).map_err(fail)?;
    if greeting.get("QMP").is_none() {
        return Err(fail(format!("not a QMP greeting: {greeting}")));
    }
    let mut command = |name: &str, arguments: Option<Value>| -> Result<(), String> {
        let mut msg = json!({ "execute": name });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        writeln!(writer, "{msg}").map_err(|e| format!("QMP {name}: {e}"))?;
        loop {
            // Asynchronous events come in between; the answer has "return" or "error".
            let reply = read_message(&mut reader)?;
            if let Some(error) = reply.get("error") {
                let desc = error
                    .get("desc")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| reply.to_string());
                return Err(format!("QMP {name}: {desc}"));
            }
            if reply.get("return").is_some() {
                return Ok(());
            }
        }
    };
    command("qmp_capabilities", None).map_err(fail)?;
    let mut arguments = json!({ "filename": file.to_string_lossy() });
    if let Some(f) = format {
        arguments["format"] = json!(f);
    }
    command("screendump", Some(arguments)).map_err(fail)
}

fn read_message(reader: &mut impl BufRead) -> Result<Value, String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err("QMP closed the connection".into()),
        Ok(_) => serde_json::from_str(&line).map_err(|e| format!("QMP sent {line:?}: {e}")),
        Err(e) => Err(format!("QMP: {e}")),
    }
}
