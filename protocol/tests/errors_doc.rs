//! `spec/errors.md` and [`ErrorCode`] list the same codes with the same
//! meaning for the connection: the table is normative, the enum mirrors it.

use chat_protocol::ErrorCode;
use std::path::PathBuf;

struct Row {
    code: i32,
    name: String,
    closes: bool,
    retryable: bool,
}

fn rows() -> Vec<Row> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec/errors.md");
    let text = std::fs::read_to_string(path).expect("spec/errors.md exists");
    text.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            let code = cells.first()?.parse::<i32>().ok()?;
            let yes = |s: &str| match s.to_ascii_lowercase().as_str() {
                "yes" => true,
                "no" => false,
                other => panic!("expected yes/no in errors.md, got {other:?}"),
            };
            Some(Row {
                code,
                name: cells.get(1)?.trim_matches('`').to_owned(),
                closes: yes(cells.get(3)?),
                retryable: yes(cells.get(4)?),
            })
        })
        .collect()
}

#[test]
fn every_code_is_documented_once_with_its_behaviour() {
    let rows = rows();
    assert!(!rows.is_empty(), "no error table found");
    let mut documented: Vec<i32> = rows.iter().map(|r| r.code).collect();
    documented.sort_unstable();
    documented.dedup();
    assert_eq!(documented.len(), rows.len(), "a code is listed twice");
    for row in &rows {
        let code = ErrorCode::try_from(row.code)
            .unwrap_or_else(|_| panic!("errors.md lists {} which chat.proto lacks", row.code));
        assert_eq!(code.as_str_name(), row.name, "name of {}", row.code);
        assert_eq!(
            code.closes_connection(),
            row.closes,
            "'closes' of {}",
            row.name
        );
        assert_eq!(
            code.is_retryable(),
            row.retryable,
            "'retryable' of {}",
            row.name
        );
    }
    // And the other way round: every non-zero code of the enum is documented.
    for value in 1..1000 {
        if let Ok(code) = ErrorCode::try_from(value) {
            assert!(
                documented.contains(&value),
                "{} is not in errors.md",
                code.as_str_name()
            );
        }
    }
}
