//! A reader for LEGACY (pre-zip, `torch.save(..., _use_new_zipfile_serialization=False)`) PyTorch
//! state dicts, enough for efficientnet-lite0-57934424.pth and nothing more.
//!
//! Layout: a pickle of the magic number, one of the protocol version (1001), one of the system
//! info (`little_endian` must be true), the state dict's pickle (tensors rebuilt by
//! `torch._utils._rebuild_tensor_v2` over storages named by persistent ids), a pickle of the list
//! of storage keys, then per key an 8-byte little-endian element count and the raw elements.
//!
//! The pickle machine below knows only the opcodes such files use (protocol 2) and only the
//! globals a state dict needs (`collections.OrderedDict`, `_rebuild_tensor_v2`, `FloatStorage`,
//! `LongStorage`); anything else is refused with an error naming it and its offset, so no pickle
//! can make it call anything.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use anyhow::{Context, anyhow, bail, ensure};

/// torch's `MAGIC_NUMBER` for legacy files.
const MAGIC: i128 = 0x1950a86a20f9469cfc6c;
const PROTOCOL_VERSION: i128 = 1001;
/// Nesting deeper than this is not a state dict (and would only grow the stacks).
const MAX_STACK: usize = 1 << 16;

/// One tensor of the state dict, made contiguous (row-major over `shape`).
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Data,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Array {
    pub fn f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            Data::I64(_) => None,
        }
    }
}

/// The state dict's entries in file order.
pub type StateDict = Vec<(String, Array)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StorageType {
    Float,
    Long,
}

impl StorageType {
    fn size(self) -> usize {
        match self {
            StorageType::Float => 4,
            StorageType::Long => 8,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    Storage(StorageType),
}

#[derive(Debug, Clone)]
enum Val {
    None,
    Bool(bool),
    Int(i128),
    Str(String),
    Tuple(Rc<Vec<Val>>),
    List(Rc<RefCell<Vec<Val>>>),
    Dict(Rc<RefCell<Vec<(Val, Val)>>>),
    Global(Global),
    Storage { typ: StorageType, key: String, numel: usize },
    Tensor(Rc<TensorRef>),
}

#[derive(Debug)]
struct TensorRef {
    typ: StorageType,
    key: String,
    /// The storage's element count as its persistent id declared it.
    numel: usize,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

impl Val {
    fn kind(&self) -> &'static str {
        match self {
            Val::None => "None",
            Val::Bool(_) => "bool",
            Val::Int(_) => "int",
            Val::Str(_) => "str",
            Val::Tuple(_) => "tuple",
            Val::List(_) => "list",
            Val::Dict(_) => "dict",
            Val::Global(_) => "global",
            Val::Storage { .. } => "storage",
            Val::Tensor(_) => "tensor",
        }
    }
    fn int(&self) -> anyhow::Result<i128> {
        match self {
            Val::Int(i) => Ok(*i),
            other => bail!("expected an int, got a {}", other.kind()),
        }
    }
    fn usize(&self) -> anyhow::Result<usize> {
        let i = self.int()?;
        usize::try_from(i).map_err(|_| anyhow!("expected a size, got {i}"))
    }
    fn str(&self) -> anyhow::Result<&str> {
        match self {
            Val::Str(s) => Ok(s),
            other => bail!("expected a string, got a {}", other.kind()),
        }
    }
    fn tuple(&self) -> anyhow::Result<&[Val]> {
        match self {
            Val::Tuple(t) => Ok(t),
            other => bail!("expected a tuple, got a {}", other.kind()),
        }
    }
    fn sizes(&self) -> anyhow::Result<Vec<usize>> {
        self.tuple()?.iter().map(Val::usize).collect()
    }
}

enum Slot {
    Mark,
    Val(Val),
}

/// Runs one pickle from `buf[*pos..]`, advancing `*pos` past its STOP.
fn unpickle(buf: &[u8], pos: &mut usize) -> anyhow::Result<Val> {
    let mut stack: Vec<Slot> = Vec::new();
    let mut memo: HashMap<u32, Val> = HashMap::new();
    fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> anyhow::Result<&'a [u8]> {
        let end = pos.checked_add(n).filter(|&e| e <= buf.len()).ok_or_else(|| anyhow!("pickle truncated"))?;
        let s = &buf[*pos..end];
        *pos = end;
        Ok(s)
    }
    fn pop(stack: &mut Vec<Slot>) -> anyhow::Result<Val> {
        match stack.pop() {
            Some(Slot::Val(v)) => Ok(v),
            Some(Slot::Mark) => bail!("unexpected mark on the stack"),
            None => bail!("stack underflow"),
        }
    }
    fn pop_mark(stack: &mut Vec<Slot>) -> anyhow::Result<Vec<Val>> {
        let m = stack.iter().rposition(|s| matches!(s, Slot::Mark)).ok_or_else(|| anyhow!("no mark"))?;
        let items = stack
            .drain(m + 1..)
            .map(|s| match s {
                Slot::Val(v) => v,
                Slot::Mark => unreachable!("the last mark is at m"),
            })
            .collect();
        stack.pop();
        Ok(items)
    }
    fn top(stack: &[Slot]) -> anyhow::Result<&Val> {
        match stack.last() {
            Some(Slot::Val(v)) => Ok(v),
            _ => bail!("no value on the stack"),
        }
    }
    fn set_items(dict: &Val, items: Vec<Val>) -> anyhow::Result<()> {
        let Val::Dict(d) = dict else { bail!("SETITEM(S) on a {}", dict.kind()) };
        ensure!(items.len().is_multiple_of(2), "SETITEMS with an odd number of items");
        let mut d = d.borrow_mut();
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }
    loop {
        let at = *pos;
        let op = *take(buf, pos, 1)?.first().expect("one byte");
        let res: anyhow::Result<()> = (|| {
            match op {
                0x80 => {
                    let p = take(buf, pos, 1)?[0];
                    ensure!(p <= 2, "pickle protocol {p} (this reader knows protocol 2)");
                }
                b'.' => {}
                b'(' => stack.push(Slot::Mark),
                b'N' => stack.push(Slot::Val(Val::None)),
                0x88 => stack.push(Slot::Val(Val::Bool(true))),
                0x89 => stack.push(Slot::Val(Val::Bool(false))),
                b'K' => stack.push(Slot::Val(Val::Int(take(buf, pos, 1)?[0] as i128))),
                b'M' => {
                    let b = take(buf, pos, 2)?;
                    stack.push(Slot::Val(Val::Int(u16::from_le_bytes([b[0], b[1]]) as i128)));
                }
                b'J' => {
                    let b = take(buf, pos, 4)?;
                    stack.push(Slot::Val(Val::Int(i32::from_le_bytes(b.try_into().expect("4")) as i128)));
                }
                0x8a => {
                    // LONG1: n bytes of little-endian two's complement.
                    let n = take(buf, pos, 1)?[0] as usize;
                    ensure!(n <= 16, "LONG1 of {n} bytes");
                    let b = take(buf, pos, n)?;
                    let mut v: i128 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= (x as i128) << (8 * i);
                    }
                    if n > 0 && n < 16 && b[n - 1] & 0x80 != 0 {
                        v -= 1i128 << (8 * n);
                    }
                    stack.push(Slot::Val(Val::Int(v)));
                }
                b'X' => {
                    let b = take(buf, pos, 4)?;
                    let n = u32::from_le_bytes(b.try_into().expect("4")) as usize;
                    let s = std::str::from_utf8(take(buf, pos, n)?).context("string is not UTF-8")?;
                    stack.push(Slot::Val(Val::Str(s.to_owned())));
                }
                0x8c => {
                    let n = take(buf, pos, 1)?[0] as usize;
                    let s = std::str::from_utf8(take(buf, pos, n)?).context("string is not UTF-8")?;
                    stack.push(Slot::Val(Val::Str(s.to_owned())));
                }
                b'q' | b'r' => {
                    let i = if op == b'q' {
                        take(buf, pos, 1)?[0] as u32
                    } else {
                        u32::from_le_bytes(take(buf, pos, 4)?.try_into().expect("4"))
                    };
                    memo.insert(i, top(&stack)?.clone());
                }
                b'h' | b'j' => {
                    let i = if op == b'h' {
                        take(buf, pos, 1)?[0] as u32
                    } else {
                        u32::from_le_bytes(take(buf, pos, 4)?.try_into().expect("4"))
                    };
                    let v = memo.get(&i).ok_or_else(|| anyhow!("memo {i} not set"))?.clone();
                    stack.push(Slot::Val(v));
                }
                b'}' => stack.push(Slot::Val(Val::Dict(Rc::default()))),
                b']' => stack.push(Slot::Val(Val::List(Rc::default()))),
                b')' => stack.push(Slot::Val(Val::Tuple(Rc::default()))),
                b't' => {
                    let items = pop_mark(&mut stack)?;
                    stack.push(Slot::Val(Val::Tuple(Rc::new(items))));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = (0..n).map(|_| pop(&mut stack)).collect::<anyhow::Result<Vec<_>>>()?;
                    items.reverse();
                    stack.push(Slot::Val(Val::Tuple(Rc::new(items))));
                }
                b's' => {
                    let v = pop(&mut stack)?;
                    let k = pop(&mut stack)?;
                    set_items(top(&stack)?, vec![k, v])?;
                }
                b'u' => {
                    let items = pop_mark(&mut stack)?;
                    set_items(top(&stack)?, items)?;
                }
                b'a' | b'e' => {
                    let items = if op == b'a' { vec![pop(&mut stack)?] } else { pop_mark(&mut stack)? };
                    let Val::List(l) = top(&stack)? else { bail!("APPEND(S) on a {}", top(&stack)?.kind()) };
                    l.borrow_mut().extend(items);
                }
                b'c' => {
                    let mut line = || -> anyhow::Result<String> {
                        let rest = &buf[*pos..];
                        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| anyhow!("pickle truncated"))?;
                        let s = std::str::from_utf8(&rest[..n]).context("global name is not UTF-8")?.to_owned();
                        *pos += n + 1;
                        Ok(s)
                    };
                    let (module, name) = (line()?, line()?);
                    let g = match (module.as_str(), name.as_str()) {
                        ("collections", "OrderedDict") => Global::OrderedDict,
                        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
                        ("torch", "FloatStorage") => Global::Storage(StorageType::Float),
                        ("torch", "LongStorage") => Global::Storage(StorageType::Long),
                        _ => bail!("the pickle refers to {module}.{name}, which this reader does not accept"),
                    };
                    stack.push(Slot::Val(Val::Global(g)));
                }
                b'Q' => {
                    // BINPERSID: ('storage', storage type, key, location, numel[, view metadata]).
                    let pid = pop(&mut stack)?;
                    let t = pid.tuple().context("persistent id")?;
                    ensure!(
                        (5..=6).contains(&t.len()) && matches!(&t[0], Val::Str(s) if s == "storage"),
                        "persistent id is not a storage: {pid:?}"
                    );
                    let Val::Global(Global::Storage(typ)) = t[1] else { bail!("storage of type {:?}", t[1]) };
                    ensure!(t.len() == 5 || matches!(t[5], Val::None), "storage views are not supported");
                    let key = t[2].str()?.to_owned();
                    stack.push(Slot::Val(Val::Storage { typ, key, numel: t[4].usize()? }));
                }
                b'R' => {
                    let args = pop(&mut stack)?;
                    let f = pop(&mut stack)?;
                    let args = args.tuple().context("REDUCE arguments")?;
                    let v = match f {
                        Val::Global(Global::OrderedDict) if args.is_empty() => Val::Dict(Rc::default()),
                        Val::Global(Global::RebuildTensorV2) => {
                            ensure!(args.len() >= 4, "_rebuild_tensor_v2 with {} arguments", args.len());
                            let Val::Storage { typ, key, numel } = &args[0] else {
                                bail!("_rebuild_tensor_v2 of a {}", args[0].kind())
                            };
                            let (size, stride) = (args[2].sizes()?, args[3].sizes()?);
                            ensure!(size.len() == stride.len(), "size {size:?} and stride {stride:?} differ in rank");
                            Val::Tensor(Rc::new(TensorRef {
                                typ: *typ,
                                key: key.clone(),
                                numel: *numel,
                                offset: args[1].usize()?,
                                size,
                                stride,
                            }))
                        }
                        other => bail!("REDUCE of a {} ({other:?}) is not accepted", other.kind()),
                    };
                    stack.push(Slot::Val(v));
                }
                b'b' => {
                    // BUILD: an OrderedDict's state (torch keeps `_metadata` there); not needed.
                    let _state = pop(&mut stack)?;
                    ensure!(matches!(top(&stack)?, Val::Dict(_)), "BUILD on a {}", top(&stack)?.kind());
                }
                _ => bail!("unsupported pickle opcode 0x{op:02x}"),
            }
            ensure!(stack.len() <= MAX_STACK, "pickle nests too deeply");
            Ok(())
        })();
        res.with_context(|| format!("pickle opcode 0x{op:02x} at byte {at}"))?;
        if op == b'.' {
            let v = pop(&mut stack).context("STOP with an empty stack")?;
            ensure!(stack.is_empty(), "values left on the stack at STOP");
            return Ok(v);
        }
    }
}

/// Reads a legacy `.pth` file.
pub fn read_file(path: &Path) -> anyhow::Result<StateDict> {
    let buf = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    read(&buf).with_context(|| format!("reading {} as a legacy torch state dict", path.display()))
}

/// Reads a legacy `.pth` from memory.
pub fn read(buf: &[u8]) -> anyhow::Result<StateDict> {
    let mut pos = 0;
    let magic = unpickle(buf, &mut pos).context("magic number")?;
    if !matches!(magic, Val::Int(MAGIC)) {
        bail!("not a legacy torch file (magic {magic:?}; a zip-format .pth is not supported here)");
    }
    let proto = unpickle(buf, &mut pos).context("protocol version")?.int()?;
    ensure!(proto == PROTOCOL_VERSION, "torch protocol version {proto}, expected {PROTOCOL_VERSION}");
    let info = unpickle(buf, &mut pos).context("system info")?;
    let Val::Dict(info) = info else { bail!("system info is a {}", info.kind()) };
    let little =
        info.borrow().iter().any(|(k, v)| matches!((k, v), (Val::Str(k), Val::Bool(true)) if k == "little_endian"));
    ensure!(little, "the file was written big-endian");

    let sd = unpickle(buf, &mut pos).context("state dict")?;
    let Val::Dict(sd) = sd else { bail!("the state dict is a {}", sd.kind()) };
    let keys = unpickle(buf, &mut pos).context("storage keys")?;
    let Val::List(keys) = keys else { bail!("the storage key list is a {}", keys.kind()) };

    // Storages as the state dict declares them, then their bytes in the key list's order.
    let entries: Vec<(String, Rc<TensorRef>)> = sd
        .borrow()
        .iter()
        .map(|(k, v)| {
            let name = k.str().context("state dict key")?.to_owned();
            let Val::Tensor(t) = v else { bail!("state dict entry {name} is a {}, not a tensor", v.kind()) };
            Ok((name, t.clone()))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut declared: HashMap<&str, (StorageType, usize)> = HashMap::new();
    for (name, t) in &entries {
        let d = *declared.entry(&t.key).or_insert((t.typ, t.numel));
        ensure!(d == (t.typ, t.numel), "storage {} declared twice differently ({name})", t.key);
    }
    let mut storages: HashMap<String, (StorageType, &[u8])> = HashMap::new();
    for k in keys.borrow().iter() {
        let k = k.str().context("storage key")?;
        let &(typ, numel) = declared.get(k).ok_or_else(|| anyhow!("storage {k} is not used by the state dict"))?;
        let n = u64::from_le_bytes(
            buf.get(pos..pos + 8).ok_or_else(|| anyhow!("file truncated at storage {k}"))?.try_into().expect("8"),
        );
        pos += 8;
        ensure!(n == numel as u64, "storage {k} holds {n} elements, its id declared {numel}");
        let len = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(typ.size()))
            .filter(|&l| l <= buf.len() - pos)
            .ok_or_else(|| anyhow!("file truncated in storage {k} ({n} elements)"))?;
        ensure!(storages.insert(k.to_owned(), (typ, &buf[pos..pos + len])).is_none(), "storage {k} twice");
        pos += len;
    }
    ensure!(pos == buf.len(), "{} bytes after the last storage", buf.len() - pos);

    entries
        .into_iter()
        .map(|(name, t)| {
            let (typ, bytes) = storages.get(&t.key).ok_or_else(|| anyhow!("storage {} of {name} missing", t.key))?;
            let arr = strided(*typ, bytes, &t).with_context(|| format!("tensor {name}"))?;
            Ok((name, arr))
        })
        .collect()
}

/// The tensor's elements gathered from its storage by offset, size and stride.
fn strided(typ: StorageType, bytes: &[u8], t: &TensorRef) -> anyhow::Result<Array> {
    let len = bytes.len() / typ.size();
    let numel = t.size.iter().try_fold(1usize, |a, &s| a.checked_mul(s)).ok_or_else(|| anyhow!("size overflows"))?;
    if numel > 0 {
        let last = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |a, (&s, &st)| (s - 1).checked_mul(st).and_then(|x| x.checked_add(a)))
            .ok_or_else(|| anyhow!("offsets overflow"))?;
        ensure!(
            last < len,
            "size {:?} stride {:?} offset {} reach past the storage ({len})",
            t.size,
            t.stride,
            t.offset
        );
    }
    let mut idx = Vec::with_capacity(numel);
    let mut counter = vec![0usize; t.size.len()];
    for _ in 0..numel {
        idx.push(t.offset + counter.iter().zip(&t.stride).map(|(c, s)| c * s).sum::<usize>());
        for d in (0..counter.len()).rev() {
            counter[d] += 1;
            if counter[d] < t.size[d] {
                break;
            }
            counter[d] = 0;
        }
    }
    let data = match typ {
        StorageType::Float => {
            Data::F32(idx.iter().map(|&i| f32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4"))).collect())
        }
        StorageType::Long => {
            Data::I64(idx.iter().map(|&i| i64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().expect("8"))).collect())
        }
    };
    Ok(Array { shape: t.size.clone(), data })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny pickle writer for the opcodes torch uses, to build test files.
    struct P(Vec<u8>);
    impl P {
        fn new() -> P {
            P(vec![0x80, 2])
        }
        fn op(mut self, b: &[u8]) -> P {
            self.0.extend_from_slice(b);
            self
        }
        fn s(self, s: &str) -> P {
            let mut p = self.op(b"X");
            p.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
            p.op(s.as_bytes())
        }
        fn int(self, i: u8) -> P {
            self.op(&[b'K', i])
        }
        fn stop(self) -> Vec<u8> {
            self.op(b".").0
        }
    }

    fn header() -> Vec<u8> {
        let mut f = P::new().op(&[0x8a, 10]).op(&MAGIC.to_le_bytes()[..10]).stop();
        f.extend(P::new().op(b"M").op(&1001u16.to_le_bytes()).stop());
        f.extend(P::new().op(b"}(").s("little_endian").op(&[0x88]).op(b"u").stop());
        f
    }

    /// A state dict with `w`: a [2, 3] float tensor stored transposed (stride (1, 2)), and `n`:
    /// a long scalar.
    fn file() -> Vec<u8> {
        let mut f = header();
        let storage = |p: P, typ: &str, key: &str, n: u8| {
            p.op(b"(").s("storage").op(format!("ctorch\n{typ}\n").as_bytes()).s(key).s("cpu").int(n).op(b"tQ")
        };
        let mut p = P::new().op(b"ccollections\nOrderedDict\nq\x00)R(").s("w");
        p = p.op(b"ctorch._utils\n_rebuild_tensor_v2\nq\x01(");
        p = storage(p, "FloatStorage", "7", 6).int(0).int(2).int(3).op(&[0x86]).int(1).int(2).op(&[0x86]);
        p = p.op(&[0x89]).op(b"h\x00)Rtq\x02R").s("n").op(b"h\x01(");
        p = storage(p, "LongStorage", "9", 1).int(0).op(b")").op(b")").op(&[0x89]).op(b"h\x00)RtR");
        f.extend(p.op(b"u}b").stop());
        f.extend(P::new().op(b"](").s("7").s("9").op(b"e").stop());
        f.extend(6u64.to_le_bytes());
        for v in [0f32, 3., 1., 4., 2., 5.] {
            f.extend(v.to_le_bytes());
        }
        f.extend(1u64.to_le_bytes());
        f.extend(42i64.to_le_bytes());
        f
    }

    #[test]
    fn reads_strided_tensors_and_scalars() {
        let sd = read(&file()).unwrap();
        assert_eq!(sd.len(), 2);
        assert_eq!(sd[0].0, "w");
        assert_eq!(sd[0].1, Array { shape: vec![2, 3], data: Data::F32(vec![0., 1., 2., 3., 4., 5.]) });
        assert_eq!(sd[1].1, Array { shape: vec![], data: Data::I64(vec![42]) });
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        let err = |b: &[u8]| format!("{:#}", read(b).unwrap_err());
        // Truncated anywhere: a clear error, never a panic.
        let f = file();
        for n in [0, 5, 30, f.len() / 2, f.len() - 1] {
            let e = err(&f[..n]);
            assert!(e.contains("truncated") || e.contains("magic"), "{n}: {e}");
        }
        // Trailing bytes.
        let mut g = f.clone();
        g.push(0);
        assert!(err(&g).contains("1 bytes after the last storage"));
        // A global outside the list (what a malicious pickle would call).
        let mut h = header();
        h.extend(P::new().op(b"cos\nsystem\n").s("true").op(&[0x85]).op(b"R").stop());
        assert!(err(&h).contains("os.system, which this reader does not accept"), "{}", err(&h));
        // An unknown opcode.
        let mut h = header();
        h.extend(P::new().op(b"I1\n").stop());
        assert!(err(&h).contains("unsupported pickle opcode 0x49"));
        // A zip-format file.
        assert!(err(b"PK\x03\x04rest").contains("unsupported pickle opcode 0x50"));
        // A view reaching past its storage.
        let mut g = f.clone();
        let i = g.windows(2).position(|w| w == [b'K', 3]).unwrap();
        g[i + 1] = 4; // size (2, 4) over 6 elements
        assert!(err(&g).contains("reach past the storage"), "{}", err(&g));
    }
}
