use super::*;

fn job(annotations: &str) -> Job {
    serde_saphyr::from_str(&format!(
        "metadata:\n  name: j\n  annotations: {annotations}\nspec:\n  template: {{}}\n"
    ))
    .expect("test yaml")
}

#[test]
fn annotations_are_read_and_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("items.txt"), "apple\n\n banana \n").expect("write");
    type Want<'a> = std::result::Result<Option<(&'a str, Option<Vec<&'a str>>)>, &'a str>;
    let cases: Vec<(&str, Want)> = vec![
        ("{}", Ok(None)),
        (
            "{workq.dev/queue: q1, workq.dev/items: \"a b\n c\"}",
            Ok(Some(("q1", Some(vec!["a", "b", "c"])))),
        ),
        (
            "{workq.dev/queue: q1, workq.dev/items-file: items.txt}",
            Ok(Some(("q1", Some(vec!["apple", "banana"])))),
        ),
        ("{workq.dev/queue: q1}", Ok(Some(("q1", None)))),
        (
            "{workq.dev/items: a}",
            Err("needs metadata.annotations[workq.dev/queue]"),
        ),
        (
            "{workq.dev/queue: q1, workq.dev/items: a, workq.dev/items-file: f}",
            Err("not both"),
        ),
        (
            "{workq.dev/queue: q1, workq.dev/pattern: medium}",
            Err("Unsupported value: \"medium\""),
        ),
        (
            "{workq.dev/queue: q1, workq.dev/items-file: nope.txt}",
            Err("nope.txt"),
        ),
    ];
    for (ann, want) in cases {
        let got = items(&job(ann), dir.path());
        match (got, want) {
            (Ok(got), Ok(want)) => {
                let want = want.map(|(q, i)| {
                    (
                        q.to_string(),
                        i.map(|v| v.into_iter().map(String::from).collect()),
                    )
                });
                assert_eq!(got, want, "{ann}");
            }
            (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{ann}: {e}"),
            (got, want) => panic!("{ann}: got {got:?}, want {want:?}"),
        }
    }
}
