//! PyTorch pickle checkpoints (`pytorch_model*.bin`, torch's zip format).
//!
//! The state dict's `data.pkl` is parsed by candle's restricted unpickler,
//! which executes nothing, but only after [`scan`] has bounded what it may
//! build: candle clones memo entries and recurses over nested objects, so a
//! hostile pickle could otherwise exhaust the memory or overflow the stack
//! (an abort, not an error). Tensor entries are then read out of the parsed
//! dict here, with checked indexing: candle's own conversion panics on short
//! tuples and prints a line for every entry it skips.

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

/// A `data.pkl` larger than this is refused (the 7B's is about 100 kB).
const MAX_PICKLE_BYTES: u64 = 64 << 20;
/// Nesting deeper than this is refused (a state dict nests about 7 deep).
const MAX_DEPTH: u32 = 64;
/// What the parse may allocate, in bytes, counting every memo clone.
const MAX_PARSE_BYTES: u64 = 512 << 20;
/// The bytes charged for one object besides its text.
const OBJECT_BYTES: u64 = 64;

/// Where one tensor's data lies in the archive.
#[derive(Debug, Clone)]
pub(crate) struct PickleTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    stride: Vec<usize>,
    /// Offset into the storage entry, in bytes.
    offset: usize,
    /// The storage's entry in the zip archive.
    entry: String,
}

/// One `pytorch_model*.bin`: its tensors' places, read lazily.
pub(crate) struct PickleShard {
    path: PathBuf,
    tensors: HashMap<String, PickleTensor>,
}

impl PickleShard {
    /// Reads the tensor table of a torch zip checkpoint; the error is the
    /// reason, for a message naming the file.
    pub fn open(path: &Path) -> Result<Self, String> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| e.to_string())?;
        let pickles: Vec<String> = zip
            .file_names()
            .filter_map(|n| n.ok())
            .filter(|n| n.ends_with("data.pkl"))
            .map(|n| n.into_owned())
            .collect();
        let mut tensors = HashMap::new();
        for name in pickles {
            let mut bytes = Vec::new();
            zip.by_name(&name)
                .map_err(|e| e.to_string())?
                .take(MAX_PICKLE_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| format!("{name}: {e}"))?;
            if bytes.len() as u64 > MAX_PICKLE_BYTES {
                return Err(format!(
                    "{name} is larger than {} MiB",
                    MAX_PICKLE_BYTES >> 20
                ));
            }
            scan(&bytes).map_err(|e| format!("{name}: {e}"))?;
            let mut stack = Stack::empty();
            stack
                .read_loop(&mut bytes.as_slice())
                .map_err(|e| format!("{name}: {e}"))?;
            let root = stack.finalize().map_err(|e| format!("{name}: {e}"))?;
            let dir = name.strip_suffix(".pkl").unwrap_or(&name);
            for (key, value) in state_dict(root) {
                if let Some(tensor) =
                    tensor_entry(value, dir).map_err(|e| format!("tensor {key}: {e}"))?
                {
                    tensors.insert(key, tensor);
                }
            }
        }
        Ok(Self {
            path: path.to_owned(),
            tensors,
        })
    }

    /// The tensors, by name.
    pub fn tensors(&self) -> &HashMap<String, PickleTensor> {
        &self.tensors
    }

    /// One tensor's data (`None` where the shard does not hold it).
    pub fn get(&self, name: &str, device: &Device) -> candle_core::Result<Option<Tensor>> {
        let Some(t) = self.tensors.get(name) else {
            return Ok(None);
        };
        let file = std::fs::File::open(&self.path)?;
        let mut zip =
            zip::ZipArchive::new(BufReader::new(file)).map_err(candle_core::Error::wrap)?;
        let mut reader = zip.by_name(&t.entry).map_err(candle_core::Error::wrap)?;
        std::io::copy(
            &mut reader.by_ref().take(t.offset as u64),
            &mut std::io::sink(),
        )?;
        let rank = t.shape.len();
        let mut reversed = t.shape.clone();
        reversed.reverse();
        // Row-major as stored, or column-major (a transposed parameter).
        let mut read = |shape: Vec<usize>| -> candle_core::Result<Tensor> {
            let bytes = shape
                .iter()
                .try_fold(t.dtype.size_in_bytes(), |n, &d| n.checked_mul(d))
                .ok_or_else(|| {
                    candle_core::Error::Msg(format!("tensor {name} has too many elements"))
                })?;
            let mut data = vec![0u8; bytes];
            reader.read_exact(&mut data)?;
            Tensor::from_raw_buffer(&data, t.dtype, &shape, &Device::Cpu)
        };
        let tensor = if strides_match(&t.shape, &t.stride, false) {
            read(t.shape.clone())?
        } else if strides_match(&t.shape, &t.stride, true) {
            read(reversed)?.permute((0..rank).rev().collect::<Vec<_>>())?
        } else {
            candle_core::bail!(
                "tensor {name} is stored with strides {:?}, which are not supported",
                t.stride
            )
        };
        tensor.to_device(device).map(Some)
    }
}

/// Whether `stride` lays `shape` out densely, row-major or (`column_major`)
/// column-major; dimensions of size 1 may have any stride, as in torch.
fn strides_match(shape: &[usize], stride: &[usize], column_major: bool) -> bool {
    let mut expected = 1usize;
    let dims: Box<dyn Iterator<Item = usize>> = if column_major {
        Box::new(0..shape.len())
    } else {
        Box::new((0..shape.len()).rev())
    };
    for d in dims {
        if shape[d] != 1 && stride[d] != expected {
            return false;
        }
        expected = expected.saturating_mul(shape[d]);
    }
    true
}

/// The state dict's entries: the root dict, or a scripted module's.
fn state_dict(root: Object) -> Vec<(String, Object)> {
    let root = match root {
        Object::Build { callable, args } => match *callable {
            Object::Reduce { callable, .. }
                if matches!(&*callable, Object::Class { module_name, class_name }
                    if module_name == "__torch__" && class_name == "Module") =>
            {
                *args
            }
            other => Object::Build {
                callable: Box::new(other),
                args,
            },
        },
        other => other,
    };
    match root {
        Object::Dict(entries) => entries
            .into_iter()
            .filter_map(|(k, v)| match k {
                Object::Unicode(k) => Some((k, v)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn is_class(obj: &Object, module: &str, class: &str) -> bool {
    matches!(obj, Object::Class { module_name, class_name } if module_name == module && class_name == class)
}

/// A state-dict value as a tensor: `Ok(None)` for values that are not
/// tensors (skipped, as torch's loader would keep them as other objects).
fn tensor_entry(value: Object, dir: &str) -> Result<Option<PickleTensor>, String> {
    let Object::Reduce { callable, args } = value else {
        return Ok(None);
    };
    let (mut callable, mut args) = (*callable, *args);
    // torch._tensor._rebuild_from_type_v2(func, type, args, state) and
    // torch._utils._rebuild_parameter(data, requires_grad, hooks) wrap the
    // plain rebuild.
    if is_class(&callable, "torch._tensor", "_rebuild_from_type_v2") {
        let mut items = into_tuple(args)?;
        check_len(&items, 3, "_rebuild_from_type_v2")?;
        args = items.swap_remove(2);
        callable = items.swap_remove(0);
    } else if is_class(&callable, "torch._utils", "_rebuild_parameter") {
        let mut items = into_tuple(args)?;
        check_len(&items, 1, "_rebuild_parameter")?;
        let Object::Reduce {
            callable: c,
            args: a,
        } = items.swap_remove(0)
        else {
            return Err("a parameter whose data is not a tensor".into());
        };
        (callable, args) = (*c, *a);
    }
    if !is_class(&callable, "torch._utils", "_rebuild_tensor_v2") {
        return Ok(None);
    }
    // _rebuild_tensor_v2(storage, storage_offset, size, stride, ...)
    let mut items = into_tuple(args)?;
    check_len(&items, 4, "_rebuild_tensor_v2")?;
    items.truncate(4);
    let stride = usizes(items.pop().unwrap_or(Object::None), "stride")?;
    let shape = usizes(items.pop().unwrap_or(Object::None), "size")?;
    let offset = non_negative(items.pop().unwrap_or(Object::None), "storage offset")?;
    let Some(Object::PersistentLoad(storage)) = items.pop() else {
        return Err("the storage is not a persistent id".into());
    };
    // ('storage', storage type, key, location, size)
    let mut storage = into_tuple(*storage)?;
    check_len(&storage, 5, "the storage id")?;
    storage.truncate(3);
    let key = match storage.pop() {
        Some(Object::Unicode(key)) => key,
        _ => return Err("the storage key is not a string".into()),
    };
    let dtype = match storage.pop() {
        Some(Object::Class { class_name, .. }) => match class_name.as_str() {
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "ByteStorage" => DType::U8,
            "LongStorage" => DType::I64,
            other => return Err(format!("unsupported storage type {other}")),
        },
        _ => return Err("the storage type is not a class".into()),
    };
    if stride.len() != shape.len() {
        return Err(format!(
            "size {shape:?} and stride {stride:?} differ in length"
        ));
    }
    let offset = offset
        .checked_mul(dtype.size_in_bytes())
        .ok_or_else(|| format!("storage offset {offset} is too large"))?;
    Ok(Some(PickleTensor {
        dtype,
        shape,
        stride,
        offset,
        entry: format!("{dir}/{key}"),
    }))
}

fn into_tuple(obj: Object) -> Result<Vec<Object>, String> {
    match obj {
        Object::Tuple(items) => Ok(items),
        _ => Err("arguments that are not a tuple".into()),
    }
}

fn check_len(items: &[Object], at_least: usize, what: &str) -> Result<(), String> {
    if items.len() < at_least {
        return Err(format!(
            "{what} has {} arguments, expected at least {at_least}",
            items.len()
        ));
    }
    Ok(())
}

fn non_negative(obj: Object, what: &str) -> Result<usize, String> {
    let value = match obj {
        Object::Int(v) => v as i64,
        Object::Long(v) => v,
        _ => return Err(format!("the {what} is not an integer")),
    };
    usize::try_from(value).map_err(|_| format!("the {what} is negative ({value})"))
}

fn usizes(obj: Object, what: &str) -> Result<Vec<usize>, String> {
    match obj {
        Object::Tuple(items) | Object::List(items) => {
            items.into_iter().map(|v| non_negative(v, what)).collect()
        }
        _ => Err(format!("the {what} is not a tuple")),
    }
}

/// What the scan knows of a stack entry: how deeply it nests and how many
/// bytes candle's copy of it takes.
#[derive(Clone, Copy)]
struct Sketch {
    depth: u32,
    bytes: u64,
    mark: bool,
}

/// Walks the opcodes candle's unpickler knows, as it would, tracking only
/// each object's depth and size: errors where nesting passes [`MAX_DEPTH`],
/// the objects built (memo copies included) pass [`MAX_PARSE_BYTES`], an
/// argument runs past the end, or an opcode is one candle does not read.
fn scan(bytes: &[u8]) -> Result<(), String> {
    let mut scanner = Scanner {
        bytes,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        spent: 0,
    };
    scanner.run()
}

struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Sketch>,
    memo: HashMap<u32, Sketch>,
    spent: u64,
}

impl Scanner<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or("truncated pickle")?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u32_arg(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A memo index: one byte (BINPUT/BINGET) or four (the LONG_ forms).
    fn memo_id(&mut self, short: bool) -> Result<u32, String> {
        if short {
            Ok(self.take(1)?[0] as u32)
        } else {
            self.u32_arg()
        }
    }

    fn line(&mut self) -> Result<usize, String> {
        let rest = &self.bytes[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("truncated pickle")?;
        self.pos += n + 1;
        Ok(n)
    }

    fn charge(&mut self, bytes: u64) -> Result<(), String> {
        self.spent = self.spent.saturating_add(bytes);
        if self.spent > MAX_PARSE_BYTES {
            return Err(format!(
                "builds more than {} MiB of objects",
                MAX_PARSE_BYTES >> 20
            ));
        }
        Ok(())
    }

    fn push(&mut self, item: Sketch) -> Result<(), String> {
        if item.depth > MAX_DEPTH {
            return Err(format!("nests deeper than {MAX_DEPTH} levels"));
        }
        self.stack.push(item);
        Ok(())
    }

    fn atom(&mut self, text: usize) -> Result<(), String> {
        let bytes = OBJECT_BYTES + text as u64;
        self.charge(bytes)?;
        self.push(Sketch {
            depth: 1,
            bytes,
            mark: false,
        })
    }

    fn pop(&mut self) -> Result<Sketch, String> {
        match self.stack.pop() {
            Some(item) if !item.mark => Ok(item),
            _ => Err("unexpected empty stack".into()),
        }
    }

    fn pop_to_mark(&mut self) -> Result<Vec<Sketch>, String> {
        let at = self
            .stack
            .iter()
            .rposition(|s| s.mark)
            .ok_or("marker object not found")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    /// A new object holding `items`.
    fn container(&mut self, items: &[Sketch]) -> Result<(), String> {
        self.charge(OBJECT_BYTES)?;
        let depth = items.iter().map(|s| s.depth).max().unwrap_or(0) + 1;
        let bytes = items
            .iter()
            .fold(OBJECT_BYTES, |sum, s| sum.saturating_add(s.bytes));
        self.push(Sketch {
            depth,
            bytes,
            mark: false,
        })
    }

    /// `items` added into the object on top of the stack.
    fn extend_last(&mut self, items: &[Sketch]) -> Result<(), String> {
        let last = match self.stack.last_mut() {
            Some(last) if !last.mark => last,
            _ => return Err("unexpected empty stack".into()),
        };
        for s in items {
            last.depth = last.depth.max(s.depth + 1);
            last.bytes = last.bytes.saturating_add(s.bytes);
        }
        if last.depth > MAX_DEPTH {
            return Err(format!("nests deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    fn run(&mut self) -> Result<(), String> {
        loop {
            let op = self.take(1)?[0];
            match op {
                0x80 => drop(self.take(1)?),
                b'c' => {
                    let text = self.line()? + self.line()?;
                    self.atom(text)?
                }
                b'q' | b'r' => {
                    let id = self.memo_id(op == b'q')?;
                    let top = *self
                        .stack
                        .last()
                        .filter(|s| !s.mark)
                        .ok_or("unexpected empty stack")?;
                    self.charge(top.bytes)?;
                    self.memo.insert(id, top);
                }
                b'h' | b'j' => {
                    let id = self.memo_id(op == b'h')?;
                    let item = *self
                        .memo
                        .get(&id)
                        .ok_or_else(|| format!("missing object in memo {id}"))?;
                    self.charge(item.bytes)?;
                    self.push(item)?
                }
                b')' | b']' | b'}' | b'd' | b'N' | 0x88 | 0x89 => self.atom(0)?,
                b'K' => {
                    self.take(1)?;
                    self.atom(0)?
                }
                b'M' => {
                    self.take(2)?;
                    self.atom(0)?
                }
                b'J' => {
                    self.take(4)?;
                    self.atom(0)?
                }
                b'G' => {
                    self.take(8)?;
                    self.atom(0)?
                }
                0x8a => {
                    let n = self.take(1)?[0] as usize;
                    self.take(n)?;
                    self.atom(0)?
                }
                b'X' => {
                    let n = self.u32_arg()? as usize;
                    self.take(n)?;
                    self.atom(n)?
                }
                b'(' => {
                    self.charge(OBJECT_BYTES)?;
                    self.stack.push(Sketch {
                        depth: 0,
                        bytes: OBJECT_BYTES,
                        mark: true,
                    })
                }
                b'R' | 0x81 | b'b' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.container(&[callable, args])?
                }
                b'Q' => {
                    let id = self.pop()?;
                    self.container(&[id])?
                }
                b't' => {
                    let items = self.pop_to_mark()?;
                    self.container(&items)?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let items = (0..n).map(|_| self.pop()).collect::<Result<Vec<_>, _>>()?;
                    self.container(&items)?
                }
                b'a' => {
                    let item = self.pop()?;
                    self.extend_last(&[item])?
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.extend_last(&[key, value])?
                }
                b'e' | b'u' => {
                    let items = self.pop_to_mark()?;
                    self.extend_last(&items)?
                }
                b'.' => return Ok(()),
                other => return Err(format!("unsupported pickle opcode 0x{other:02x}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_bounds_nesting_and_memo_copies() {
        let nested =
            |n: usize| [&b"\x80\x02"[..], &vec![b']'; n], &vec![b'a'; n - 1], b"."].concat();
        assert!(scan(&nested(MAX_DEPTH as usize)).is_ok());
        let err = scan(&nested(200_000)).unwrap_err();
        assert!(err.contains("nests deeper than 64"), "{err}");
        // A 1 MiB string copied through the memo a thousand times.
        let mut memo_bomb = b"\x80\x02]X".to_vec();
        memo_bomb.extend((1u32 << 20).to_le_bytes());
        memo_bomb.extend(vec![b'x'; 1 << 20]);
        memo_bomb.extend(b"q\x00a");
        memo_bomb.extend(b"h\x00a".repeat(1000));
        memo_bomb.push(b'.');
        let err = scan(&memo_bomb).unwrap_err();
        assert!(err.contains("more than 512 MiB"), "{err}");
        // A string longer than the pickle, an unknown opcode, no STOP.
        assert_eq!(
            scan(b"\x80\x02X\xff\xff\xff\x7fabc.").unwrap_err(),
            "truncated pickle"
        );
        assert!(scan(b"\x80\x02\x93.").unwrap_err().contains("0x93"));
        assert_eq!(scan(b"\x80\x02]").unwrap_err(), "truncated pickle");
    }

    #[test]
    fn short_rebuild_arguments_are_errors_not_panics() {
        let rebuild = Object::Class {
            module_name: "torch._utils".into(),
            class_name: "_rebuild_tensor_v2".into(),
        };
        let short = Object::Reduce {
            callable: Box::new(rebuild),
            args: Box::new(Object::Tuple(vec![Object::None])),
        };
        let err = tensor_entry(short, "archive/data").unwrap_err();
        assert_eq!(
            err,
            "_rebuild_tensor_v2 has 1 arguments, expected at least 4"
        );
        assert!(tensor_entry(Object::Int(3), "archive/data")
            .unwrap()
            .is_none());
    }
}
