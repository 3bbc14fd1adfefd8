//! Unit tests of `hpack`.

use super::*;
use proptest::prelude::*;

fn bytes(hex: &str) -> Vec<u8> {
    hex::decode(hex.replace(' ', "")).unwrap()
}

fn field(name: &str, value: &str) -> Field {
    Field {
        name: name.into(),
        value: value.into(),
        never_indexed: false,
    }
}

fn table(d: &Decoder) -> Vec<(String, String)> {
    d.table
        .iter()
        .map(|(n, v)| {
            (
                String::from_utf8(n.clone()).unwrap(),
                String::from_utf8(v.clone()).unwrap(),
            )
        })
        .collect()
}

/// Decodes `blocks` in order with one decoder; checks each block's fields, the
/// dynamic table (newest first) and its size after it; then checks that the
/// stateless re-encoding decodes to the same fields with a fresh decoder whose
/// table stays empty.
/// A block (hex), its fields, the dynamic table after it, the table's size.
type Step<'a> = (
    &'a str,
    &'a [(&'a str, &'a str)],
    &'a [(&'a str, &'a str)],
    usize,
);

fn check_sequence(mut d: Decoder, blocks: &[Step<'_>]) {
    for (hex, fields, entries, size) in blocks {
        let got = d.decode(&bytes(hex), MAX_TABLE_SIZE * 16).unwrap();
        let want: Vec<Field> = fields.iter().map(|(n, v)| field(n, v)).collect();
        assert_eq!(got, want, "{hex}");
        let entries: Vec<(String, String)> = entries
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(table(&d), entries, "{hex}");
        assert_eq!(d.size, *size, "{hex}");

        let mut encoded = Vec::new();
        encode(&got, &mut encoded);
        let mut fresh = Decoder::default();
        assert_eq!(fresh.decode(&encoded, usize::MAX).unwrap(), got);
        assert!(fresh.table.is_empty(), "the re-encoding indexed something");
    }
}

const C3_1: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "www.example.com"),
];
const C3_2: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "www.example.com"),
    ("cache-control", "no-cache"),
];
const C3_3: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "https"),
    (":path", "/index.html"),
    (":authority", "www.example.com"),
    ("custom-key", "custom-value"),
];
const T1: &[(&str, &str)] = &[(":authority", "www.example.com")];
const T2: &[(&str, &str)] = &[
    ("cache-control", "no-cache"),
    (":authority", "www.example.com"),
];
const T3: &[(&str, &str)] = &[
    ("custom-key", "custom-value"),
    ("cache-control", "no-cache"),
    (":authority", "www.example.com"),
];

/// RFC 7541 C.3: requests without Huffman coding, one connection.
#[test]
fn rfc_7541_c3_requests_without_huffman() {
    check_sequence(
        Decoder::default(),
        &[
            (
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                C3_1,
                T1,
                57,
            ),
            ("8286 84be 5808 6e6f 2d63 6163 6865", C3_2, T2, 110),
            (
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
                C3_3,
                T3,
                164,
            ),
        ],
    );
}

/// RFC 7541 C.4: the same requests with Huffman coding.
#[test]
fn rfc_7541_c4_requests_with_huffman() {
    check_sequence(
        Decoder::default(),
        &[
            ("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff", C3_1, T1, 57),
            ("8286 84be 5886 a8eb 1064 9cbf", C3_2, T2, 110),
            (
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
                C3_3,
                T3,
                164,
            ),
        ],
    );
}

/// RFC 7541 C.5: responses with eviction from a 256-byte table; the size comes
/// from a dynamic table size update in the first block here.
#[test]
fn rfc_7541_c5_eviction_after_a_size_update() {
    let date1 = "Mon, 21 Oct 2013 20:13:21 GMT";
    let date2 = "Mon, 21 Oct 2013 20:13:22 GMT";
    let loc = "https://www.example.com";
    let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
    check_sequence(
        Decoder::default(),
        &[
            (
                "3fe1 01 4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                &[
                    (":status", "302"),
                    ("cache-control", "private"),
                    ("date", date1),
                    ("location", loc),
                ],
                &[
                    ("location", loc),
                    ("date", date1),
                    ("cache-control", "private"),
                    (":status", "302"),
                ],
                222,
            ),
            (
                "4803 3330 37c1 c0bf",
                &[
                    (":status", "307"),
                    ("cache-control", "private"),
                    ("date", date1),
                    ("location", loc),
                ],
                &[
                    (":status", "307"),
                    ("location", loc),
                    ("date", date1),
                    ("cache-control", "private"),
                ],
                222,
            ),
            (
                "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
                &[
                    (":status", "200"),
                    ("cache-control", "private"),
                    ("date", date2),
                    ("location", loc),
                    ("content-encoding", "gzip"),
                    ("set-cookie", cookie),
                ],
                &[
                    ("set-cookie", cookie),
                    ("content-encoding", "gzip"),
                    ("date", date2),
                ],
                215,
            ),
        ],
    );
}

/// RFC 7541 C.1: integer representation.
#[test]
fn integers() {
    let mut out = Vec::new();
    integer(10, 5, 0, &mut out);
    assert_eq!(out, [0x0a]);
    out.clear();
    integer(1337, 5, 0, &mut out);
    assert_eq!(out, [0x1f, 0x9a, 0x0a]);
    for n in 4..=7u8 {
        for v in [
            0,
            1,
            14,
            15,
            16,
            30,
            31,
            62,
            63,
            126,
            127,
            128,
            300,
            16_383,
            1 << 20,
            u32::MAX as usize,
        ] {
            let mut out = Vec::new();
            integer(v, n, 0, &mut out);
            let mut input = Input { buf: &out, pos: 0 };
            assert_eq!(input.integer(n).unwrap(), v, "{v} with a {n}-bit prefix");
            assert_eq!(input.pos, out.len());
        }
    }
    // Past u32, and padded with too many continuation bytes.
    let mut input = Input {
        buf: &[0x7f, 0xff, 0xff, 0xff, 0xff, 0x7f],
        pos: 0,
    };
    assert_eq!(input.integer(7), Err(HpackError::IntegerOverflow));
    let mut input = Input {
        buf: &[
            0x7f, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
        ],
        pos: 0,
    };
    assert_eq!(input.integer(7), Err(HpackError::IntegerOverflow));
    let mut input = Input {
        buf: &[0x7f, 0x80],
        pos: 0,
    };
    assert_eq!(input.integer(7), Err(HpackError::Truncated));
}

#[test]
fn encoding_uses_the_static_table_and_keeps_never_indexed() {
    let fields = vec![
        field(":method", "POST"),
        field(":scheme", "http"),
        field(":authority", "localhost"),
        field("content-type", "application/grpc"),
        field("x-custom", "v"),
        Field {
            name: b"authorization".to_vec(),
            value: b"Bearer secret".to_vec(),
            never_indexed: true,
        },
        Field {
            name: b"x-secret".to_vec(),
            value: b"s".to_vec(),
            never_indexed: true,
        },
    ];
    let mut out = Vec::new();
    encode(&fields, &mut out);
    let mut want = vec![0x83, 0x86, 0x01, 9];
    want.extend_from_slice(b"localhost");
    want.extend_from_slice(&[0x0f, 0x10, 16]);
    want.extend_from_slice(b"application/grpc");
    want.extend_from_slice(&[0x00, 8]);
    want.extend_from_slice(b"x-custom");
    want.extend_from_slice(&[1, b'v', 0x1f, 0x08, 13]);
    want.extend_from_slice(b"Bearer secret");
    want.extend_from_slice(&[0x10, 8]);
    want.extend_from_slice(b"x-secret");
    want.extend_from_slice(&[1, b's']);
    assert_eq!(out, want);
    let mut d = Decoder::default();
    assert_eq!(d.decode(&out, usize::MAX).unwrap(), fields);
    assert!(d.table.is_empty());
}

#[test]
fn never_indexed_is_decoded_as_such() {
    // 0001 0000, literal name "password", value "secret" (RFC 7541 C.2.3).
    let block = bytes("1008 7061 7373 776f 7264 0673 6563 7265 74");
    let mut d = Decoder::default();
    let fields = d.decode(&block, usize::MAX).unwrap();
    assert_eq!(
        fields,
        [Field {
            name: b"password".to_vec(),
            value: b"secret".to_vec(),
            never_indexed: true
        }]
    );
    assert!(d.table.is_empty());
    // C.2.2: literal without indexing, name index 4.
    let fields = d
        .decode(&bytes("040c 2f73 616d 706c 652f 7061 7468"), usize::MAX)
        .unwrap();
    assert_eq!(fields, [field(":path", "/sample/path")]);
    assert!(d.table.is_empty());
}

#[test]
fn table_size_updates() {
    let mut d = Decoder::default();
    d.decode(
        &bytes("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"),
        usize::MAX,
    )
    .unwrap();
    assert_eq!(d.size, 55);
    // To 0: everything evicted, and a new entry does not fit.
    let fields = d.decode(&bytes("20 4001 6101 62"), usize::MAX).unwrap();
    assert_eq!(fields, [field("a", "b")]);
    assert!(d.table.is_empty());
    assert_eq!(
        d.decode(&bytes("be"), usize::MAX),
        Err(HpackError::InvalidIndex(62))
    );
    // Back to 4096 (31 + 0x61 + 0x1f << 7), then one more is too many.
    d.decode(&bytes("3fe1 1f 4001 6101 62"), usize::MAX)
        .unwrap();
    assert_eq!(table(&d), [("a".to_string(), "b".to_string())]);
    assert_eq!(
        d.decode(&bytes("3fe2 1f"), usize::MAX),
        Err(HpackError::TableSizeTooLarge(4097))
    );
    // Only at the start of a block; two in a row are fine.
    assert_eq!(
        d.decode(&bytes("2020 82"), usize::MAX).unwrap(),
        [field(":method", "GET")]
    );
    assert_eq!(
        d.decode(&bytes("82 20"), usize::MAX),
        Err(HpackError::LateTableSizeUpdate)
    );
}

#[test]
fn an_entry_larger_than_the_table_empties_it() {
    let mut d = Decoder::default();
    d.decode(&bytes("4001 6101 62"), usize::MAX).unwrap();
    let mut block = vec![0x40, 0x01, b'c'];
    integer(4100, 7, 0, &mut block);
    block.extend(std::iter::repeat_n(b'x', 4100));
    let fields = d.decode(&block, usize::MAX).unwrap();
    assert_eq!(fields[0].value.len(), 4100);
    assert!(d.table.is_empty());
    assert_eq!(d.size, 0);
}

#[test]
fn malformed_blocks_are_refused() {
    let mut d = Decoder::default();
    for (hex, err) in [
        ("80", HpackError::InvalidIndex(0)),
        ("be", HpackError::InvalidIndex(62)),
        ("ff 80 01", HpackError::InvalidIndex(255)),
        ("400a 61", HpackError::Truncated),
        ("40", HpackError::Truncated),
        ("41", HpackError::Truncated),
        ("0f", HpackError::Truncated),
        ("7e", HpackError::InvalidIndex(62)),
        ("4081 ff01 61", HpackError::Huffman(HuffmanError::Padding)),
        (
            "0084 ffff ffff 0161",
            HpackError::Huffman(HuffmanError::Eos),
        ),
        ("00 7fff ffff ff0f", HpackError::IntegerOverflow),
    ] {
        assert_eq!(d.decode(&bytes(hex), usize::MAX), Err(err), "{hex}");
    }
}

#[test]
fn decoded_size_is_bounded() {
    let mut d = Decoder::default();
    // A 4000-byte value inserted once, then referenced 17 times: 17 * 4042 > 64 KiB.
    let mut block = vec![0x40, 0x01, b'n'];
    integer(4000, 7, 0, &mut block);
    block.extend(std::iter::repeat_n(b'v', 4000));
    d.decode(&block, 64 * 1024).unwrap();
    let refs = vec![0xbe; 17];
    assert_eq!(
        d.decode(&refs, 64 * 1024),
        Err(HpackError::HeaderListTooLarge { limit: 64 * 1024 })
    );
    assert_eq!(d.decode(&refs[..16], 64 * 1024).unwrap().len(), 16);
}

fn arb_field() -> impl Strategy<Value = Field> {
    let name = prop_oneof![
        Just(b":authority".to_vec()),
        Just(b":method".to_vec()),
        Just(b"content-type".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..20),
    ];
    let value = prop_oneof![
        Just(b"GET".to_vec()),
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 0..300),
    ];
    (name, value, any::<bool>()).prop_map(|(name, value, never_indexed)| Field {
        name,
        value,
        never_indexed,
    })
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(fields in proptest::collection::vec(arb_field(), 0..20)) {
        let mut out = Vec::new();
        encode(&fields, &mut out);
        let mut d = Decoder::default();
        prop_assert_eq!(d.decode(&out, usize::MAX).unwrap(), fields);
        prop_assert!(d.table.is_empty());
    }

    #[test]
    fn arbitrary_blocks_never_panic(
        blocks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..4)
    ) {
        let mut d = Decoder::default();
        for block in blocks {
            let _ = d.decode(&block, 64 * 1024);
            prop_assert!(d.size <= d.max_size && d.max_size <= MAX_TABLE_SIZE);
        }
    }

    #[test]
    fn huffman_literals_decode(name in "[a-z-]{1,20}", value in proptest::collection::vec(any::<u8>(), 0..100)) {
        // Literal with incremental indexing, both strings Huffman-coded.
        let mut block = vec![0x40];
        for s in [name.as_bytes(), &value[..]] {
            let h = super::super::huffman::encode(s);
            integer(h.len(), 7, 0x80, &mut block);
            block.extend_from_slice(&h);
        }
        let mut d = Decoder::default();
        let fields = d.decode(&block, usize::MAX).unwrap();
        prop_assert_eq!(&fields[0].name, name.as_bytes());
        prop_assert_eq!(&fields[0].value, &value);
        prop_assert_eq!(d.table.len(), 1);
    }
}
