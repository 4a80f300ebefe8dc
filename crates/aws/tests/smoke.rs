//! The SDK reaches moto through the plan's endpoint override.

mod common;

#[tokio::test]
async fn the_sdk_talks_to_moto_through_the_endpoint_override() {
    let config = cutover_aws::config::load(&common::aws()).await;
    assert_eq!(
        cutover_aws::config::require_region(&config).unwrap(),
        "us-east-1"
    );
    let r53 = aws_sdk_route53::Client::new(&config);
    let name = format!("{}.example.com", common::unique("zone"));
    let created = r53
        .create_hosted_zone()
        .name(&name)
        .caller_reference(&name)
        .send()
        .await
        .unwrap();
    let id = created.hosted_zone().unwrap().id().to_string();
    // Read back by id: a listing is paged (100 zones), and the tests of
    // one moto create more than that.
    let found = r53.get_hosted_zone().id(&id).send().await.unwrap();
    assert_eq!(found.hosted_zone().unwrap().name(), format!("{name}."));
}
