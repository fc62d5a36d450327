//! The per-attempt store data and the host side of the `mayfly:task` imports.

use std::sync::Arc;

use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::mayfly::task::{host, types};
use super::io::{InputHandle, InputSource, OpenError, OutputHandle, OutputSet};
use super::limits::MemoryLimiter;
use super::log::{Level, LogSource, SharedLog};

/// Largest chunk one read returns, whatever the task asks for: bounds the host
/// memory a single call can take.
const MAX_READ: u64 = 4 << 20;
/// A panic message longer than this is cut.
const MAX_PANIC_MESSAGE: usize = 4096;

/// Which limit stopped the attempt, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitStop {
    Output,
    Log,
}

/// Everything one attempt's store holds.
pub(crate) struct State {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) input: Arc<dyn InputSource>,
    pub(crate) input_read: u64,
    pub(crate) params: Arc<str>,
    pub(crate) partitions: u32,
    pub(crate) outputs: Option<OutputSet>,
    pub(crate) log: SharedLog,
    pub(crate) panic: Option<String>,
    pub(crate) stopped_by: Option<LimitStop>,
    pub(crate) progress: Option<(u64, u64)>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

fn io_error(e: OpenError) -> types::IoError {
    match e {
        OpenError::Invalid(m) => types::IoError::Invalid(m),
        OpenError::Storage(m) => types::IoError::Storage(m),
        OpenError::Closed => types::IoError::Closed,
    }
}

impl State {
    fn read_input(&mut self, offset: u64, max: u32) -> Result<Vec<u8>, types::IoError> {
        let size = self.input.size();
        if offset >= size {
            return Ok(Vec::new());
        }
        let want = u64::from(max).min(size - offset).min(MAX_READ) as usize;
        let mut buf = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            match self.input.read_at(offset + filled as u64, &mut buf[filled..]) {
                Ok(0) => {
                    return Err(types::IoError::Storage(format!(
                        "{}: the input ended at byte {} but was listed as {size} bytes; it changed while being read",
                        self.input.name(),
                        offset + filled as u64
                    )));
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(types::IoError::Storage(format!("{}: {e}", self.input.name()))),
            }
        }
        self.input_read += filled as u64;
        Ok(buf)
    }

    fn limit_trap(&mut self, which: LimitStop) -> wasmtime::Error {
        self.stopped_by = Some(which);
        wasmtime::format_err!(match which {
            LimitStop::Output => "output limit exceeded",
            LimitStop::Log => "log limit exceeded",
        })
    }
}

impl types::Host for State {}

impl types::HostInput for State {
    fn name(&mut self, _this: Resource<InputHandle>) -> wasmtime::Result<String> {
        Ok(self.input.name().to_owned())
    }

    fn size(&mut self, _this: Resource<InputHandle>) -> wasmtime::Result<u64> {
        Ok(self.input.size())
    }

    fn offset_in_object(&mut self, _this: Resource<InputHandle>) -> wasmtime::Result<u64> {
        Ok(self.input.offset_in_object())
    }

    fn read(&mut self, this: Resource<InputHandle>, max: u32) -> wasmtime::Result<Result<Vec<u8>, types::IoError>> {
        let cursor = self.table.get(&this)?.cursor;
        let result = self.read_input(cursor, max);
        if let Ok(data) = &result {
            self.table.get_mut(&this)?.cursor = cursor + data.len() as u64;
        }
        Ok(result)
    }

    fn read_at(
        &mut self,
        _this: Resource<InputHandle>,
        offset: u64,
        max: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, types::IoError>> {
        Ok(self.read_input(offset, max))
    }

    fn drop(&mut self, this: Resource<InputHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl types::HostOutput for State {
    fn write(&mut self, this: Resource<OutputHandle>, bytes: Vec<u8>) -> wasmtime::Result<Result<(), types::IoError>> {
        let index = self.table.get(&this)?.index;
        let Some(outputs) = self.outputs.as_mut() else {
            return Ok(Err(types::IoError::Closed));
        };
        match outputs.write(index, &bytes) {
            Ok(result) => Ok(result.map_err(io_error)),
            Err(_) => Err(self.limit_trap(LimitStop::Output)),
        }
    }

    fn drop(&mut self, this: Resource<OutputHandle>) -> wasmtime::Result<()> {
        let handle = self.table.delete(this)?;
        if let Some(outputs) = self.outputs.as_mut() {
            // A flush error here resurfaces when the attempt finishes the outputs.
            let _ = outputs.close(handle.index);
        }
        Ok(())
    }
}

impl host::Host for State {
    fn open_output(&mut self, name: String) -> wasmtime::Result<Result<Resource<OutputHandle>, types::IoError>> {
        let Some(outputs) = self.outputs.as_mut() else {
            return Ok(Err(types::IoError::Closed));
        };
        match outputs.open(&name) {
            Ok(index) => Ok(Ok(self.table.push(OutputHandle { index })?)),
            Err(e) => Ok(Err(io_error(e))),
        }
    }

    fn log(&mut self, level: types::Level, message: String, fields: Vec<types::Field>) -> wasmtime::Result<()> {
        let level = match level {
            types::Level::Trace => Level::Trace,
            types::Level::Debug => Level::Debug,
            types::Level::Info => Level::Info,
            types::Level::Warn => Level::Warn,
            types::Level::Error => Level::Error,
        };
        let fields = fields.into_iter().map(|f| (f.key, f.value)).collect();
        let ok = match self.log.lock() {
            Ok(mut log) => log.push(level, LogSource::Task, message, fields),
            Err(_) => false,
        };
        if ok { Ok(()) } else { Err(self.limit_trap(LimitStop::Log)) }
    }

    fn progress(&mut self, done: u64, total: u64) -> wasmtime::Result<()> {
        self.progress = Some((done, total));
        Ok(())
    }

    fn params(&mut self) -> wasmtime::Result<String> {
        Ok(self.params.to_string())
    }

    fn partitions(&mut self) -> wasmtime::Result<u32> {
        Ok(self.partitions)
    }

    fn panicked(&mut self, message: String) -> wasmtime::Result<()> {
        let mut message = message;
        if message.len() > MAX_PANIC_MESSAGE {
            let mut cut = MAX_PANIC_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        self.panic = Some(message);
        Ok(())
    }
}
