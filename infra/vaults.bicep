// kvlink's footprint on the watched vaults, applied by the postdeploy hook (scripts/postdeploy.*) after
// `azd deploy`, and removed by the predown hook (scripts/predown.*). Kept out of main.bicep so that
// `azd down` never treats a vault's resource group as its own (see the note at the top of main.bicep).
//
// Per vault, in the vault's resource group (any subscription of the tenant):
// - core/keyvault/vault-access.bicep: access policy "list" on secrets, or Key Vault Reader on RBAC vaults,
//   and the AuditEvent diagnostic setting to kvlink's Event Hub;
// - core/eventgrid/system-topic.bicep: the vault's Event Grid system topic and the subscription that
//   delivers SecretNewVersionCreated / SecretNearExpiry / SecretExpired to on_secret_event. It needs the
//   deployed function, which is why this runs after deploy, the way Microsoft's templates create
//   their Event Grid subscriptions.
// Everything is a PUT of a named resource, so running it again changes nothing.
targetScope = 'subscription'

@minLength(1)
param environmentName string

@description('The watched vaults: [{ id: <vault resource id>, rbac: <true when the vault uses Azure RBAC> }]. The hook reads rbac from each vault (properties.enableRbacAuthorization): ARM cannot branch on a reference() in a condition.')
param vaults array

@description('Resource id of kvlink\'s function app.')
param functionAppId string
@description('Principal id of kvlink\'s user-assigned identity.')
param functionPrincipalId string
@description('Resource id of the identity Event Grid dead-letters with.')
param eventGridIdentityId string

param eventHubAuthorizationRuleId string
param eventHubName string

param deadLetterStorageAccountId string
param deadLetterContainerName string

var abbrs = loadJsonContent('abbreviations.json')
var tags = {
  'azd-env-name': environmentName
}

module vaultAccess 'core/keyvault/vault-access.bicep' = [for vault in vaults: {
  name: 'kvlink-access-${uniqueString(vault.id)}'
  scope: resourceGroup(split(vault.id, '/')[2], split(vault.id, '/')[4])
  params: {
    vaultName: last(split(vault.id, '/'))
    rbac: vault.rbac
    principalId: functionPrincipalId
    tenantId: tenant().tenantId
    diagnosticSettingName: 'kvlink'
    eventHubAuthorizationRuleId: eventHubAuthorizationRuleId
    eventHubName: eventHubName
  }
}]

module vaultEvents 'core/eventgrid/system-topic.bicep' = [for (vault, i) in vaults: {
  name: 'kvlink-events-${uniqueString(vault.id)}'
  scope: resourceGroup(split(vault.id, '/')[2], split(vault.id, '/')[4])
  params: {
    name: '${abbrs.eventGridSystemTopics}kvlink-${toLower(last(split(vault.id, '/')))}'
    location: vaultAccess[i].outputs.location
    tags: tags
    vaultId: vault.id
    deliveryIdentityId: eventGridIdentityId
    subscriptionName: 'kvlink-on-secret-event'
    functionResourceId: '${functionAppId}/functions/on_secret_event'
    deadLetterStorageAccountId: deadLetterStorageAccountId
    deadLetterContainerName: deadLetterContainerName
  }
}]

output SYSTEM_TOPIC_IDS array = [for (vault, i) in vaults: vaultEvents[i].outputs.id]
