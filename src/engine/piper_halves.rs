//! Cuts a Piper voice's ONNX graph in two at the vocoder's input, so that its audio
//! can be made a few hundred milliseconds at a time.
//!
//! A Piper (VITS) voice is one graph: text encoder, duration predictor and flow turn
//! phonemes into a latent `z` (192 channels × one frame per 256 samples), and the
//! HiFi-GAN vocoder (`dec`) turns `z` into audio. The vocoder is most of the cost
//! (~65 % for a sentence here) and only looks a few frames either side, so run on a
//! slice of `z` with 12 frames of context each side it gives the same samples as on
//! the whole (to ~1e-7). One graph can only answer when the whole piece is done; the
//! two halves let the first fifth of a second play after the front half and one
//! short vocoder run.
//!
//! ONNX models are protobufs. Only the few fields needed to select nodes are read
//! (`NodeProto` inputs, outputs and name, `TensorProto` names and dims); everything
//! else is copied through byte for byte, so no ONNX library is needed.

use std::collections::{HashMap, HashSet};

/// The two halves of a voice, as ONNX models ready for ONNX Runtime.
pub struct Halves {
    /// The voice's inputs (phoneme ids, lengths, scales[, speaker]) → `z`.
    pub front: Vec<u8>,
    /// `z` → audio, under the input name `LATENT`.
    pub vocoder: Vec<u8>,
    /// `z`'s channels (192 for Piper's voices).
    pub latent_channels: usize,
}

/// The name of the vocoder's only input in the cut model.
pub const LATENT: &str = "z";

/// Where the cut goes: the input of the vocoder's first convolution, named by the
/// PyTorch exporter Piper's training exports with.
const VOCODER_FIRST_NODE: &str = "/dec/conv_pre/";

/// Cuts `model` (a Piper voice's .onnx) in two, or says why it cannot (a voice
/// exported another way; it is then synthesised whole, as before).
pub fn cut(model: &[u8]) -> Result<Halves, String> {
    let top = fields(model)?;
    let graph_bytes = top.iter().find(|f| f.number == 7).ok_or("no graph in the model")?.bytes;
    let graph = Graph::read(graph_bytes)?;
    let conv_pre = graph.nodes.iter().find(|n| n.name.starts_with(VOCODER_FIRST_NODE)).ok_or("no /dec/conv_pre node (not a Piper VITS export)")?;
    let latent = conv_pre.inputs.first().ok_or("the vocoder's first node has no input")?.clone();
    let weight = conv_pre.inputs.get(1).and_then(|w| graph.initializers.iter().find(|i| &i.name == w)).ok_or("the vocoder's first convolution has no weight")?;
    let latent_channels = *weight.dims.get(1).ok_or("the vocoder's first weight has no input channels")? as usize;

    let output = graph.outputs.first().ok_or("the model has no output")?;
    let vocoder_nodes = graph.needed_for(&[output.name.clone()], &latent);
    let front_nodes = graph.needed_for(&[latent.clone()], "");
    let reached_inputs = |nodes: &[usize]| -> Vec<String> {
        let consumed: HashSet<&str> = nodes.iter().flat_map(|&i| graph.nodes[i].inputs.iter().map(String::as_str)).collect();
        graph.inputs.iter().filter(|i| consumed.contains(i.name.as_str())).map(|i| i.name.clone()).collect()
    };
    if !reached_inputs(&vocoder_nodes).is_empty() {
        // A multi-speaker voice conditions the vocoder on the speaker too.
        return Err("the vocoder reads the model's inputs besides z (a multi-speaker voice)".into());
    }

    // The front keeps every input of the voice (piper-rs feeds them all) and gives z.
    let front = graph.write(&front_nodes, graph.inputs.iter().map(|i| i.bytes.to_vec()).collect(), vec![float_tensor_info(&latent)], None);
    // The vocoder reads z under a plain name of its own.
    let vocoder = graph.write(&vocoder_nodes, vec![float_tensor_info(LATENT)], vec![output.bytes.to_vec()], Some((&latent, LATENT)));
    Ok(Halves { front: with_graph(&top, &front), vocoder: with_graph(&top, &vocoder), latent_channels })
}

struct Node<'a> {
    bytes: &'a [u8],
    name: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

struct Initializer<'a> {
    bytes: &'a [u8],
    name: String,
    dims: Vec<i64>,
}

struct ValueInfo<'a> {
    bytes: &'a [u8],
    name: String,
}

/// A GraphProto: nodes in their (topological) order, initializers, inputs and
/// outputs; the rest (its name, docs) kept to copy.
struct Graph<'a> {
    nodes: Vec<Node<'a>>,
    initializers: Vec<Initializer<'a>>,
    inputs: Vec<ValueInfo<'a>>,
    outputs: Vec<ValueInfo<'a>>,
    other: Vec<Field<'a>>,
}

impl<'a> Graph<'a> {
    fn read(bytes: &'a [u8]) -> Result<Graph<'a>, String> {
        let mut g = Graph { nodes: Vec::new(), initializers: Vec::new(), inputs: Vec::new(), outputs: Vec::new(), other: Vec::new() };
        for f in fields(bytes)? {
            match f.number {
                1 => {
                    let mut node = Node { bytes: f.bytes, name: String::new(), inputs: Vec::new(), outputs: Vec::new() };
                    for n in fields(f.bytes)? {
                        match n.number {
                            1 => node.inputs.push(n.string()?),
                            2 => node.outputs.push(n.string()?),
                            3 => node.name = n.string()?,
                            _ => {}
                        }
                    }
                    g.nodes.push(node);
                }
                5 => {
                    let mut init = Initializer { bytes: f.bytes, name: String::new(), dims: Vec::new() };
                    for t in fields(f.bytes)? {
                        match (t.number, t.wire) {
                            (1, WIRE_VARINT) => init.dims.push(t.varint as i64),
                            (1, WIRE_BYTES) => init.dims.extend(packed_varints(t.bytes)?.into_iter().map(|d| d as i64)),
                            (8, _) => init.name = t.string()?,
                            _ => {}
                        }
                    }
                    g.initializers.push(init);
                }
                11 | 12 => {
                    let name = fields(f.bytes)?.into_iter().find(|v| v.number == 1).map(|v| v.string()).transpose()?.unwrap_or_default();
                    let info = ValueInfo { bytes: f.bytes, name };
                    if f.number == 11 { g.inputs.push(info) } else { g.outputs.push(info) }
                }
                // value_info (13) is only shape hints: ONNX Runtime infers them again.
                13 => {}
                _ => g.other.push(f),
            }
        }
        Ok(g)
    }

    /// The nodes that `targets` need, in graph order, going back no further than
    /// `stop` (a tensor given as an input).
    fn needed_for(&self, targets: &[String], stop: &str) -> Vec<usize> {
        let producer: HashMap<&str, usize> = self.nodes.iter().enumerate().flat_map(|(i, n)| n.outputs.iter().map(move |o| (o.as_str(), i))).collect();
        let mut wanted: Vec<&str> = targets.iter().map(String::as_str).collect();
        let mut keep = vec![false; self.nodes.len()];
        while let Some(tensor) = wanted.pop() {
            if tensor == stop {
                continue;
            }
            if let Some(&i) = producer.get(tensor) {
                if !keep[i] {
                    keep[i] = true;
                    wanted.extend(self.nodes[i].inputs.iter().map(String::as_str).filter(|s| !s.is_empty()));
                }
            }
        }
        (0..self.nodes.len()).filter(|&i| keep[i]).collect()
    }

    /// A GraphProto of `nodes` with the initializers they use, `inputs` and
    /// `outputs` (ValueInfoProto bytes); `rename` renames a tensor where nodes read it.
    fn write(&self, nodes: &[usize], inputs: Vec<Vec<u8>>, outputs: Vec<Vec<u8>>, rename: Option<(&str, &str)>) -> Vec<u8> {
        let used: HashSet<&str> = nodes.iter().flat_map(|&i| self.nodes[i].inputs.iter().map(String::as_str)).collect();
        let mut out = Vec::new();
        for &i in nodes {
            let node = &self.nodes[i];
            match rename.filter(|(from, _)| node.inputs.iter().any(|x| x == from)) {
                None => put_bytes(&mut out, 1, node.bytes),
                Some((from, to)) => put_bytes(&mut out, 1, &renamed_inputs(node.bytes, from, to)),
            }
        }
        for f in &self.other {
            put_bytes(&mut out, f.number, f.bytes);
        }
        for init in self.initializers.iter().filter(|i| used.contains(i.name.as_str())) {
            put_bytes(&mut out, 5, init.bytes);
        }
        for i in &inputs {
            put_bytes(&mut out, 11, i);
        }
        for o in &outputs {
            put_bytes(&mut out, 12, o);
        }
        out
    }
}

/// A NodeProto with its input `from` read as `to` instead.
fn renamed_inputs(node: &[u8], from: &str, to: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(node.len());
    for f in fields(node).expect("read once already") {
        if f.number == 1 && f.bytes == from.as_bytes() {
            put_bytes(&mut out, 1, to.as_bytes());
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    out
}

/// ValueInfoProto { name, type: tensor of float, shape unknown }.
fn float_tensor_info(name: &str) -> Vec<u8> {
    let mut tensor = Vec::new();
    put_varint_field(&mut tensor, 1, 1); // elem_type FLOAT
    let mut type_proto = Vec::new();
    put_bytes(&mut type_proto, 1, &tensor);
    let mut info = Vec::new();
    put_bytes(&mut info, 1, name.as_bytes());
    put_bytes(&mut info, 2, &type_proto);
    info
}

/// The ModelProto `top` with its graph replaced (opset, IR version and the rest kept).
fn with_graph(top: &[Field], graph: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(graph.len() + 256);
    for f in top {
        if f.number == 7 {
            put_bytes(&mut out, 7, graph);
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    out
}

const WIRE_VARINT: u8 = 0;
const WIRE_I64: u8 = 1;
const WIRE_BYTES: u8 = 2;
const WIRE_I32: u8 = 5;

/// One protobuf field: its number, wire type, value (`varint` or `bytes`) and the
/// whole field as it was written (`raw`), to copy it through unchanged.
struct Field<'a> {
    number: u32,
    wire: u8,
    varint: u64,
    bytes: &'a [u8],
    raw: &'a [u8],
}

impl Field<'_> {
    fn string(&self) -> Result<String, String> {
        String::from_utf8(self.bytes.to_vec()).map_err(|_| format!("field {} is not UTF-8 text", self.number))
    }
}

fn fields(mut b: &[u8]) -> Result<Vec<Field<'_>>, String> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let start = b;
        let key = varint(&mut b)?;
        let (number, wire) = ((key >> 3) as u32, (key & 7) as u8);
        let (mut value, mut bytes) = (0, &b[..0]);
        match wire {
            WIRE_VARINT => value = varint(&mut b)?,
            WIRE_I64 | WIRE_I32 => {
                let n = if wire == WIRE_I64 { 8 } else { 4 };
                bytes = b.get(..n).ok_or("a fixed-size field runs past the end")?;
                b = &b[n..];
            }
            WIRE_BYTES => {
                let n = varint(&mut b)? as usize;
                bytes = b.get(..n).ok_or("a length-delimited field runs past the end (not an ONNX model?)")?;
                b = &b[n..];
            }
            other => return Err(format!("wire type {other} is not one ONNX uses (not an ONNX model?)")),
        }
        let raw = &start[..start.len() - b.len()];
        out.push(Field { number, wire, varint: value, bytes, raw });
    }
    Ok(out)
}

fn varint(b: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first().ok_or("a number runs past the end")?;
        *b = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("a number longer than 64 bits".into())
}

fn packed_varints(mut b: &[u8]) -> Result<Vec<u64>, String> {
    let mut out = Vec::new();
    while !b.is_empty() {
        out.push(varint(&mut b)?);
    }
    Ok(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint_field(out: &mut Vec<u8>, number: u32, v: u64) {
    put_varint(out, u64::from(number) << 3 | u64::from(WIRE_VARINT));
    put_varint(out, v);
}

fn put_bytes(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    put_varint(out, u64::from(number) << 3 | u64::from(WIRE_BYTES));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_back_as_written() {
        let mut b = Vec::new();
        put_varint_field(&mut b, 1, 300);
        put_bytes(&mut b, 7, b"graph");
        let f = fields(&b).unwrap();
        assert_eq!((f[0].number, f[0].varint), (1, 300));
        assert_eq!((f[1].number, f[1].bytes), (7, &b"graph"[..]));
        assert_eq!(f.iter().flat_map(|f| f.raw.iter().copied()).collect::<Vec<u8>>(), b, "raw spans the whole field");
    }

    #[test]
    fn what_is_not_a_piper_voice_is_said_plainly() {
        assert!(cut(b"GGUF\x03\x00\x00\x00").err().unwrap().contains("not"), "garbage");
        let mut model = Vec::new();
        put_bytes(&mut model, 7, &[]);
        assert!(cut(&model).err().unwrap().contains("/dec/conv_pre"), "a graph without Piper's vocoder");
    }
}
