//! Just enough HPACK (RFC 7541) to rewrite a client's header blocks: a [`Decoder`] that
//! mirrors the client's dynamic table, and [`encode`], which writes a block that
//! references the static table only, so the receiving decoder's dynamic table stays
//! empty and can never disagree with the client's.

use std::collections::VecDeque;

use super::huffman::{self, HuffmanError};

/// The dynamic table size the server advertises: HTTP/2's default
/// `SETTINGS_HEADER_TABLE_SIZE` (h2 sends no other).
pub const MAX_TABLE_SIZE: usize = 4096;

/// Why a header block does not decode. Any of these ends the connection: the dynamic
/// table no longer matches the client's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    /// The block ends inside an integer, a string or a representation.
    #[error("header block truncated")]
    Truncated,
    /// An integer does not fit the limits HPACK values can have here.
    #[error("HPACK integer too large")]
    IntegerOverflow,
    /// Index 0, or an index past the static and dynamic tables.
    #[error("HPACK index {0} is not in the table")]
    InvalidIndex(usize),
    /// A string literal is not valid Huffman code.
    #[error("invalid Huffman string literal: {0}")]
    Huffman(HuffmanError),
    /// A dynamic table size update above the advertised maximum.
    #[error("dynamic table size update to {0}, above the {MAX_TABLE_SIZE} allowed")]
    TableSizeTooLarge(usize),
    /// A dynamic table size update after the first header field of a block.
    #[error("dynamic table size update after a header field")]
    LateTableSizeUpdate,
    /// The decoded header list is larger than the limit.
    #[error("decoded header list larger than {limit} bytes")]
    HeaderListTooLarge {
        /// The limit, in RFC 7540 `SETTINGS_MAX_HEADER_LIST_SIZE` units.
        limit: usize,
    },
}

/// A decoded header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The name, as the client sent it.
    pub name: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Sent as "never indexed" (RFC 7541 section 6.2.3): re-encoded the same way.
    pub never_indexed: bool,
}

impl Field {
    /// The field's size as RFC 7541 section 4.1 counts it.
    fn size(&self) -> usize {
        entry_size(&self.name, &self.value)
    }
}

fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Decodes a client's header blocks in order, keeping its dynamic table.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first, as HPACK numbers them.
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max_size: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            table: VecDeque::new(),
            size: 0,
            max_size: MAX_TABLE_SIZE,
        }
    }
}

impl Decoder {
    /// Decodes one complete header block, updating the dynamic table as the client did.
    /// Fails when the decoded list is larger than `max_list_size` (name + value + 32 per
    /// field, as `SETTINGS_MAX_HEADER_LIST_SIZE` counts).
    pub fn decode(&mut self, block: &[u8], max_list_size: usize) -> Result<Vec<Field>, HpackError> {
        let mut input = Input { buf: block, pos: 0 };
        let mut fields = Vec::new();
        let mut list_size = 0usize;
        while let Some(&first) = input.peek() {
            let field = if first & 0x80 != 0 {
                // Indexed header field (6.1).
                let index = input.integer(7)?;
                let (name, value) = self.get(index)?;
                Field {
                    name: name.to_vec(),
                    value: value.to_vec(),
                    never_indexed: false,
                }
            } else if first & 0xc0 == 0x40 {
                // Literal with incremental indexing (6.2.1).
                let field = self.literal(&mut input, 6, false)?;
                self.insert(field.name.clone(), field.value.clone());
                field
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update (6.3): only before the first field.
                if !fields.is_empty() {
                    return Err(HpackError::LateTableSizeUpdate);
                }
                let size = input.integer(5)?;
                if size > MAX_TABLE_SIZE {
                    return Err(HpackError::TableSizeTooLarge(size));
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                // Literal without indexing (0000) or never indexed (0001) (6.2.2, 6.2.3).
                self.literal(&mut input, 4, first & 0x10 != 0)?
            };
            list_size = list_size.saturating_add(field.size());
            if list_size > max_list_size {
                return Err(HpackError::HeaderListTooLarge {
                    limit: max_list_size,
                });
            }
            fields.push(field);
        }
        Ok(fields)
    }

    /// The entry at HPACK index `index` (1-based; static, then dynamic).
    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        if index == 0 {
            return Err(HpackError::InvalidIndex(index));
        }
        if let Some((name, value)) = STATIC_TABLE.get(index - 1) {
            return Ok((name.as_bytes(), value.as_bytes()));
        }
        self.table
            .get(index - 1 - STATIC_TABLE.len())
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .ok_or(HpackError::InvalidIndex(index))
    }

    /// A literal representation whose name index has a `prefix`-bit prefix.
    fn literal(
        &self,
        input: &mut Input<'_>,
        prefix: u8,
        never_indexed: bool,
    ) -> Result<Field, HpackError> {
        let index = input.integer(prefix)?;
        let name = if index == 0 {
            input.string()?
        } else {
            self.get(index)?.0.to_vec()
        };
        let value = input.string()?;
        Ok(Field {
            name,
            value,
            never_indexed,
        })
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = entry_size(&name, &value);
        // An entry larger than the table empties it and is not added (4.4).
        self.evict(size);
        if size <= self.max_size {
            self.size += size;
            self.table.push_front((name, value));
        }
    }

    /// Evicts the oldest entries until `room` more bytes fit (or the table is empty).
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.table.pop_back() {
                Some((n, v)) => self.size -= entry_size(&n, &v),
                None => break,
            }
        }
    }
}

/// A cursor over a header block.
struct Input<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn peek(&self) -> Option<&u8> {
        self.buf.get(self.pos)
    }

    fn byte(&mut self) -> Result<u8, HpackError> {
        let b = *self.buf.get(self.pos).ok_or(HpackError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// An integer with an `n`-bit prefix (5.1). Values are bounded to `u32`: no index,
    /// length or table size in a block we accept comes near that.
    fn integer(&mut self, n: u8) -> Result<usize, HpackError> {
        let max_prefix = (1u8 << n) - 1;
        let prefix = self.byte()? & max_prefix;
        if prefix < max_prefix {
            return Ok(usize::from(prefix));
        }
        let mut value = u64::from(max_prefix);
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            // Five continuation bytes hold 35 bits, more than a `u32`; a sixth is refused
            // (zero bytes padding the integer included).
            if shift > 28 {
                return Err(HpackError::IntegerOverflow);
            }
            value += u64::from(b & 0x7f) << shift;
            if value > u64::from(u32::MAX) {
                return Err(HpackError::IntegerOverflow);
            }
            if b & 0x80 == 0 {
                return usize::try_from(value).map_err(|_| HpackError::IntegerOverflow);
            }
            shift += 7;
        }
    }

    /// A string literal (5.2), Huffman-decoded if so marked.
    fn string(&mut self) -> Result<Vec<u8>, HpackError> {
        let huffman = self.peek().ok_or(HpackError::Truncated)? & 0x80 != 0;
        let len = self.integer(7)?;
        let end = self.pos.checked_add(len).ok_or(HpackError::Truncated)?;
        let raw = self.buf.get(self.pos..end).ok_or(HpackError::Truncated)?;
        self.pos = end;
        if huffman {
            let mut out = Vec::with_capacity(raw.len() * 8 / 5);
            huffman::decode(raw, &mut out).map_err(HpackError::Huffman)?;
            Ok(out)
        } else {
            Ok(raw.to_vec())
        }
    }
}

/// Encodes `fields` without the dynamic table: an exact static entry as an index, other
/// fields as literals without indexing (or never indexed, as received), names from the
/// static table where it has them, strings raw. No table size update is written.
pub fn encode(fields: &[Field], out: &mut Vec<u8>) {
    for field in fields {
        let name_index = STATIC_TABLE
            .iter()
            .position(|(n, _)| n.as_bytes() == field.name.as_slice());
        if !field.never_indexed
            && let Some(i) = STATIC_TABLE
                .iter()
                .position(|(n, v)| n.as_bytes() == field.name && v.as_bytes() == field.value)
        {
            integer(i + 1, 7, 0x80, out);
            continue;
        }
        let flags = if field.never_indexed { 0x10 } else { 0x00 };
        match name_index {
            Some(i) => integer(i + 1, 4, flags, out),
            None => {
                out.push(flags);
                string(&field.name, out);
            }
        }
        string(&field.value, out);
    }
}

/// Writes `value` with an `n`-bit prefix, the first byte's high bits set to `flags`.
pub(super) fn integer(value: usize, n: u8, flags: u8, out: &mut Vec<u8>) {
    let max_prefix = (1usize << n) - 1;
    if value < max_prefix {
        // Fits the prefix: `value < 2^n <= 128`.
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max_prefix as u8);
    let mut rest = value - max_prefix;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// A raw (not Huffman-coded) string literal.
fn string(s: &[u8], out: &mut Vec<u8>) {
    integer(s.len(), 7, 0x00, out);
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests;
