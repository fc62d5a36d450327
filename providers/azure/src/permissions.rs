//! The role definitions the function's and the nodes' identities need, for
//! jobs on given locations.

use super::*;

/// The custom role definitions (Azure RBAC) of the function's identity, the
/// nodes' identity and the reaper, scoped to the job's resource group (and
/// the storage the job's `az://` locations are in): exactly the ARM
/// operations this provider calls and the Blob data actions of core's data
/// path.
pub fn role_definitions(
    locations: &[String],
    subscription: Option<&str>,
    group: Option<&str>,
    event_job_url: Option<&str>,
    node_artifact: Option<&str>,
) -> Result<serde_json::Value, ProviderError> {
    use serde_json::json;
    let mut urls: Vec<&str> = locations.iter().map(String::as_str).collect();
    urls.extend(event_job_url);
    if urls.is_empty() {
        return Err(fail(
            ErrorKind::Config,
            "no locations: name the job's input, output and state (az://container/prefix), or give a job file",
        ));
    }
    let mut containers = Vec::new();
    for url in &urls {
        let rest = url.strip_prefix("az://").ok_or_else(|| {
            fail(ErrorKind::Config, format!("{url}: the azure provider's jobs read and write az:// locations"))
        })?;
        let container = rest.split('/').next().unwrap_or_default();
        if container.is_empty() {
            return Err(fail(ErrorKind::Config, format!("{url}: expected az://container/prefix")));
        }
        if !containers.contains(&container) {
            containers.push(container);
        }
    }
    let sub = subscription.unwrap_or("<subscription-id>");
    let rg = group.unwrap_or("<resource-group>");
    let scope = format!("/subscriptions/{sub}/resourceGroups/{rg}");
    let blobs = [
        "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
        "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write",
        "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete",
        "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/add/action",
    ];
    let condition = containers
        .iter()
        .map(|c| {
            format!("@Resource[Microsoft.Storage/storageAccounts/blobServices/containers:name] StringEquals '{c}'")
        })
        .collect::<Vec<_>>()
        .join(" OR ");
    let role = |name: &str, about: &str, actions: Vec<&str>, data: bool| {
        json!({
            "Name": name,
            "IsCustom": true,
            "Description": about,
            "Actions": actions,
            "NotActions": [],
            "DataActions": if data { blobs.to_vec() } else { vec![] },
            "NotDataActions": [],
            "AssignableScopes": [scope.clone()],
        })
    };
    let mut function = role(
        "mayfly function",
        "The bootstrap function's identity: makes, watches and deletes the job's VMs in the resource group; reads and writes the job's containers.",
        vec![
            "Microsoft.Compute/virtualMachines/read",
            "Microsoft.Compute/virtualMachines/write",
            "Microsoft.Compute/virtualMachines/delete",
            "Microsoft.Compute/disks/write",
            "Microsoft.Compute/disks/delete",
            "Microsoft.Network/networkInterfaces/read",
            "Microsoft.Network/networkInterfaces/write",
            "Microsoft.Network/networkInterfaces/delete",
            "Microsoft.Network/networkInterfaces/join/action",
            "Microsoft.Network/virtualNetworks/subnets/join/action",
            "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action",
        ],
        true,
    );
    // The Blob trigger (an identity-based connection) keeps its receipts in queues.
    if let Some(data) = function["DataActions"].as_array_mut() {
        for a in [
            "Microsoft.Storage/storageAccounts/queueServices/queues/messages/read",
            "Microsoft.Storage/storageAccounts/queueServices/queues/messages/write",
            "Microsoft.Storage/storageAccounts/queueServices/queues/messages/delete",
            "Microsoft.Storage/storageAccounts/queueServices/queues/messages/process/action",
        ] {
            data.push(a.into());
        }
    }
    let nodes = role(
        "mayfly node",
        "The nodes' user-assigned identity: sees the job's VMs and deletes them (itself, the master's leftover workers); reads and writes the job's containers.",
        vec![
            "Microsoft.Compute/virtualMachines/read",
            "Microsoft.Compute/virtualMachines/delete",
            "Microsoft.Compute/disks/delete",
            "Microsoft.Network/networkInterfaces/delete",
        ],
        true,
    );
    let reaper = role(
        "mayfly reaper",
        "Who runs `mayfly reap --provider azure` on a schedule: lists and deletes expired VMs.",
        vec![
            "Microsoft.Compute/virtualMachines/read",
            "Microsoft.Compute/virtualMachines/delete",
            "Microsoft.Compute/disks/delete",
            "Microsoft.Network/networkInterfaces/delete",
        ],
        false,
    );
    let mut notes = vec![
        format!(
            "assign each role at {scope}; the data actions need the storage account's scope too (or the resource group's, if the account is in it)"
        ),
        format!("restrict the data actions to the job's containers with this role assignment condition: {condition}"),
        "the nodes' identity is the user-assigned identity named by `identity` (its client id in `identity_client_id`)"
            .to_owned(),
    ];
    if subscription.is_none() || group.is_none() {
        notes.push("set subscription_id and resource_group to fill in the scope".into());
    }
    notes.push(
        "the function app's host (`mayfly deploy azure` gives it identity-based AzureWebJobsStorage) also needs, for the function's \
         identity, blob data on the account's azure-webjobs-hosts and azure-webjobs-secrets containers, Storage Queue Data \
         Contributor (the Blob trigger's queues), and blobs/read on the artifacts' container (run-from-package)"
            .into(),
    );
    if let Some(a) = node_artifact {
        notes.push(format!("the nodes read the node artifact {a}: its container needs the nodes' blobs/read"));
    }
    Ok(json!({ "function_role": function, "node_role": nodes, "reaper": reaper, "notes": notes }))
}
