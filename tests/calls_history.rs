//! `GET /api/calls`: the caller's calls, newest first, paged, filtered by status.

mod calls_support;
mod common;

use calls_support::{api, create, start, token};
use serde_json::json;

fn ids(page: &serde_json::Value) -> Vec<String> {
    page["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_newest_first_paged_and_filtered() {
    let server = start(&[]).await;
    let mut made = Vec::new();
    for i in 0..5 {
        let invitee = if i % 2 == 0 { "bob" } else { "carol" };
        let body = create(
            &server,
            "alice",
            json!({"type": "one-to-one", "media": "audio", "invitees": [invitee], "title": format!("call {i}")}),
        )
        .await;
        made.push(body["call"]["id"].as_str().unwrap().to_owned());
        // distinct creation times
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let newest_first: Vec<String> = made.iter().rev().cloned().collect();
    let alice = token("alice");

    let mut seen = Vec::new();
    for (page, expect) in [(1, 2), (2, 2), (3, 1), (4, 0)] {
        let (status, body) = api(
            &server,
            "GET",
            &format!("/api/calls?page={page}&limit=2"),
            Some(&alice),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["total"], 5);
        assert_eq!(body["page"], page);
        assert_eq!(body["limit"], 2);
        assert_eq!(ids(&body).len(), expect, "page {page}: {body}");
        seen.extend(ids(&body));
    }
    assert_eq!(seen, newest_first);

    // the default page holds everything; each record is complete
    let (_, body) = api(&server, "GET", "/api/calls", Some(&alice), None).await;
    assert_eq!(ids(&body), newest_first);
    assert_eq!(body["calls"][0]["title"], "call 4");
    assert_eq!(
        body["calls"][0]["participants"].as_array().unwrap().len(),
        2
    );

    // bob sees only the calls he was invited to
    let (_, body) = api(&server, "GET", "/api/calls", Some(&token("bob")), None).await;
    assert_eq!(
        ids(&body),
        vec![made[4].clone(), made[2].clone(), made[0].clone()]
    );
    let (_, body) = api(&server, "GET", "/api/calls", Some(&token("nobody")), None).await;
    assert_eq!(body["total"], 0);

    // end two; filter by status
    for id in [&made[1], &made[3]] {
        let (status, _) = api(
            &server,
            "POST",
            &format!("/api/calls/{id}/end"),
            Some(&alice),
            None,
        )
        .await;
        assert_eq!(status, 200);
    }
    let (_, body) = api(
        &server,
        "GET",
        "/api/calls?status=ended",
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(body["total"], 2);
    assert_eq!(ids(&body), vec![made[3].clone(), made[1].clone()]);
    let (_, body) = api(
        &server,
        "GET",
        "/api/calls?status=initiated&limit=1&page=2",
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(body["total"], 3);
    assert_eq!(ids(&body), vec![made[2].clone()]);
    let (_, body) = api(
        &server,
        "GET",
        "/api/calls?status=active",
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(body["total"], 0);

    for bad in ["status=busy", "page=0", "limit=0", "limit=101", "page=x"] {
        let (status, body) = api(
            &server,
            "GET",
            &format!("/api/calls?{bad}"),
            Some(&alice),
            None,
        )
        .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
}
